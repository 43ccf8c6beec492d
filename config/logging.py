"""Logging: plain text in dev, JSON lines elsewhere; secrets never reach a log."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from config.settings import Settings

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
# Credentials in URLs (scheme://user:pw@host) and bearer tokens.
_URL_CRED = re.compile(r"(\w+://[^:/\s@]*:)[^@\s]+@")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_API_KEY = re.compile(r"(kiln_)[A-Za-z0-9_-]{16,}")  # keys made by `kiln keys create`


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    text = _URL_CRED.sub(r"\1***@", text)
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
        return True


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
    secrets = (settings.s3_secret_key, settings.webhook_secret, settings.flower_basic_auth)
    if settings.effective_log_format == "json":
        handler.setFormatter(JsonFormatter(secrets))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
