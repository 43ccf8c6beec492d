"""Logging: plain text in dev, JSON lines elsewhere; secrets never reach a log.

Every Kiln process calls :func:`setup_logging` (the API in each gunicorn worker,
``kiln worker``, ``kiln flower``, and ``celery -A tasks worker`` through Celery's
``setup_logging`` signal): one handler whose filter scrubs every record, message and
traceback alike, of the configured secrets (the S3 secret key, the webhook secret,
the Flower password, the passwords and secret query values of every URL-shaped
setting), of credentials in any URL, of secret-looking query values and of bearer
tokens and Kiln API keys.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from config.settings import Settings, url_secrets

_EXTRA_KEYS = (
    "job_id",
    "model",
    "batch_id",
    "batch_size",
    "duration_s",
    "upload_s",
    "queue",
    "worker",
)
# Credentials in URLs (scheme://user:pw@host), secret query values, bearer tokens.
_URL_CRED = re.compile(r"(\w+://[^:/\s@]*:)[^@\s]+@")
_QUERY_SECRET = re.compile(
    r"(?i)([?&][^=&\s]*(?:pass|pwd|secret|token|key|sig|auth|credential|session)[^=&\s]*=)"
    r"[^&\s'\"#]+"
)
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_API_KEY = re.compile(r"(kiln_)[A-Za-z0-9_-]{16,}")  # keys made by `kiln keys create`


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    text = _URL_CRED.sub(r"\1***@", text)
    text = _QUERY_SECRET.sub(r"\1***", text)
    text = _BEARER.sub(r"\1***", text)
    text = _API_KEY.sub(r"\1***", text)
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s and len(s) >= 4)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = scrub(msg, self.secrets)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:  # tracebacks quote URLs too
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, self.secrets)
        return True


URL_FIELDS = (
    "broker_url",
    "redis_url",
    "s3_endpoint_url",
    "s3_public_endpoint_url",
    "public_base_url",
    "webhook_proxy",
)


def secrets_of(settings: Settings) -> tuple[str, ...]:
    """Every secret value the settings hold, as a log might print it."""
    found = [settings.s3_secret_key, settings.webhook_secret, settings.flower_basic_auth]
    if ":" in settings.flower_basic_auth:
        found.append(settings.flower_basic_auth.split(":", 1)[1])
    for name in URL_FIELDS:
        found += url_secrets(getattr(settings, name))
    return tuple(s for s in found if s)


class JsonFormatter(logging.Formatter):
    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s and len(s) >= 4)

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _EXTRA_KEYS:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info and record.exc_info[0] is not None:
            out["error"] = record.exc_info[0].__name__
            out["trace"] = scrub(self.formatException(record.exc_info), self.secrets)
        return json.dumps(out, default=str)


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    secrets = secrets_of(settings)
    if settings.effective_log_format == "json":
        handler.setFormatter(JsonFormatter(secrets))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    redact = RedactingFilter(secrets)
    handler.addFilter(redact)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # Handlers other libraries set up themselves (gunicorn's, tornado's) get the filter too.
    for logger in list(logging.Logger.manager.loggerDict.values()):
        for other in getattr(logger, "handlers", ()):
            if not any(isinstance(f, RedactingFilter) for f in other.filters):
                other.addFilter(redact)
    for noisy in ("botocore", "boto3", "s3transfer", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its warnings quote request URLs
