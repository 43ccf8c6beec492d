"""Settings: one frozen object read once from ``KILN_*`` environment variables.

Nothing else in Kiln reads a ``KILN_*`` variable. The only other environment Kiln
touches is ``CUDA_VISIBLE_DEVICES`` (set by ``kiln worker --gpu`` before torch loads)
and prometheus-client's ``PROMETHEUS_MULTIPROC_DIR`` (``config/gunicorn.py``).
Defaults are the dev profile, so that ``make run`` and the tests need no
configuration at all; outside dev and test, serving processes refuse those defaults
(``config/production.py``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from config.errors import SettingsError

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODELS_FILE = PACKAGE_DIR / "models.yaml"
DEFAULT_DATA_DIR = Path.home() / ".cache" / "kiln"
CPU_DTYPES = ("fp32", "bf16", "auto")  # KILN_CPU_DTYPE: half-precision models on the CPU
# The embedded S3 server's credentials: the dev profile's only (config/production.py).
DEV_S3_ACCESS_KEY = "kiln-dev"
DEV_S3_SECRET_KEY = "kiln-dev-secret"

SECRET_FIELDS = frozenset(
    {"s3_secret_key", "webhook_secret", "flower_basic_auth", "api_keys", "broker_url", "redis_url"}
)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every knob Kiln has; ``KILN_<FIELD>`` in upper case sets each one."""

    profile: str = "dev"  # dev | prod
    data_dir: Path = DEFAULT_DATA_DIR

    # Broker and job store. The dev ports stay clear of a system Redis on 6379.
    broker_url: str = ""  # empty: the dev fleet's Valkey, redis://127.0.0.1:<broker_port>/0
    redis_url: str = ""  # job store; defaults to broker_url when it is redis://
    # TLS for rediss:// broker and job store URLs: the CA that signed the server's
    # certificate (PEM; empty: the system's), and a client certificate and key when the
    # server asks for one (the key may sit in the certificate's file).
    redis_ca_file: str = ""
    redis_cert_file: str = ""
    redis_key_file: str = ""
    job_ttl_s: int = 7 * 24 * 3600
    visibility_timeout_s: int = 0  # 0: derived from the longest model time limit

    # Object storage (any S3 API: AWS, MinIO, R2, SeaweedFS, rclone).
    s3_endpoint_url: str = ""  # empty: the dev fleet's S3 server, http://127.0.0.1:<s3_port>
    # The same S3 as clients reach it (across a proxy, NAT or another network): image
    # URLs are presigned for it, while the fleet reads and writes through s3_endpoint_url.
    s3_public_endpoint_url: str = ""  # empty: URLs name s3_endpoint_url
    s3_ca_bundle: str = ""  # CA bundle (PEM) for an https:// endpoint; empty: the system's
    s3_bucket: str = "kiln"
    s3_access_key: str = ""  # empty in the dev profile: the dev S3 server's credentials
    s3_secret_key: str = ""
    s3_region: str = "us-east-1"
    s3_create_bucket: bool = True
    public_base_url: str = ""  # e.g. https://cdn.example.com: URLs are <base>/<key>
    url_expiry_s: int = 3600  # presigned GET lifetime when public_base_url is empty

    # Models.
    models_file: Path = DEFAULT_MODELS_FILE
    models_dir: Path = DEFAULT_DATA_DIR / "models"  # where tiny stand-ins live
    # Entries added by `kiln models add`, one YAML file each, read after models_file.
    models_dropin_dir: Path = DEFAULT_DATA_DIR / "models.d"
    device: str = ""  # "", "cpu", "cuda", "cuda:0": empty picks cuda when present
    cpu_dtype: str = "fp32"  # half-precision models on the CPU: fp32 | bf16 | auto (bf16 if native)
    torch_threads: int = 0  # a worker's torch intra-op threads; 0: torch's default (one per core)

    # Processes.
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    flower_host: str = "127.0.0.1"
    flower_port: int = 5555
    flower_basic_auth: str = ""  # user:password
    broker_port: int = 6390  # embedded Valkey in the dev fleet
    s3_port: int = 9390  # embedded S3 server in the dev fleet

    # Webhooks.
    webhook_secret: str = ""
    webhook_allow_private: bool = False
    webhook_max_attempts: int = 6
    webhook_backoff_s: float = 2.0
    webhook_timeout_s: float = 10.0  # one deadline for a whole delivery attempt
    webhook_proxy: str = ""  # http://[user:pw@]host:port: webhooks go through it (optional)

    # Jobs.
    max_deliveries: int = 3
    outage_budget_s: float = 600.0  # a worker rides out a job-store or S3 outage this long
    lost_message_sweep_s: float = 30.0  # how often to look for jobs whose message is lost
    # Longest a job may wait in its worker (behind other batches) before its first
    # pipeline call; its time limits count only its own pipeline time. 0: no limit.
    queue_wait_limit_s: float = 300.0
    # A worker serving several models (``kiln worker --models a,b``): the device bytes its
    # resident models may take (0: the device's free memory at start less a headroom on a
    # GPU, no limit on the CPU), a host-RAM cache for evicted ones (0: none), and how long
    # another model's oldest job may wait before a model whose queue has jobs is evicted.
    model_budget_mb: int = 0
    model_headroom_mb: int = 0  # 0: a fifth of the device's memory, at least 2 GiB
    host_cache_mb: int = 0
    max_swap_wait_s: float = 10.0
    load_delay_s: float = 0.0  # added to every load from disk: rehearses real load times
    idempotency_ttl_s: int = 24 * 3600
    sse_max_s: int = 900  # one event stream stays open at most this long
    # Requests that hold a gunicorn thread for long, per API process (32 threads): keep
    # the sum below the threads, so that ordinary requests always find one.
    sse_max_streams: int = 16  # open event streams (each holds a thread)
    sync_max_waits: int = 8  # synchronous OpenAI-style requests waiting for their job
    key_slot_share: float = 0.5  # of each cap, what one API key (or address) may hold
    default_s_per_image: float = 1.0  # ETA before a worker has measured anything
    sync_timeout_s: float = 120.0  # OpenAI-compatible endpoint waits this long
    required_models: str = ""  # comma list /readyz insists on; empty: every enabled model
    api_keys: str = ""  # name:sha256hex:scope+scope, comma separated (`kiln keys create`)
    api_keys_file: str = ""  # more entries, one per line (# comments), e.g. a mounted secret
    auth: str = ""  # "off": no keys asked, dev and test profiles only; "on" or "": keys
    rate_limit: str = "120/minute"  # per API key (or per client address when open)
    max_concurrent_jobs: int = 64  # queued + running jobs per API key
    max_body_bytes: int = 64 * 1024
    max_image_body_bytes: int = 20 * 1024 * 1024  # requests carrying image inputs
    input_fetch_timeout_s: float = 10.0  # one deadline for fetching an image input URL
    input_fetch_max: int = 8  # image-URL fetches at once per API process (each holds a thread)
    log_format: str = ""  # "json" or "text"; empty: text in dev, json elsewhere
    log_level: str = "INFO"

    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.profile not in {"dev", "prod", "test"}:
            raise SettingsError(f"KILN_PROFILE must be dev, test or prod, got {self.profile!r}")
        if self.auth not in {"", "on", "off"}:
            raise SettingsError(f"KILN_AUTH must be on or off, got {self.auth!r}")
        if self.torch_threads < 0:
            raise SettingsError(f"KILN_TORCH_THREADS must be >= 0, got {self.torch_threads}")
        if self.cpu_dtype not in CPU_DTYPES:
            raise SettingsError(
                f"KILN_CPU_DTYPE must be one of {', '.join(CPU_DTYPES)}, got {self.cpu_dtype!r}"
            )
        if not self.broker_url:
            object.__setattr__(self, "broker_url", f"redis://127.0.0.1:{self.broker_port}/0")
        if not self.s3_endpoint_url:
            object.__setattr__(self, "s3_endpoint_url", f"http://127.0.0.1:{self.s3_port}")
        if self.is_dev and not (self.s3_access_key or self.s3_secret_key):
            object.__setattr__(self, "s3_access_key", DEV_S3_ACCESS_KEY)
            object.__setattr__(self, "s3_secret_key", DEV_S3_SECRET_KEY)
        for name in ("s3_endpoint_url", "s3_public_endpoint_url", "public_base_url"):
            value = getattr(self, name)
            if value and not value.startswith(("http://", "https://")):
                raise SettingsError(f"KILN_{name.upper()} must be an http:// or https:// URL")
        if self.redis_key_file and not self.redis_cert_file:
            raise SettingsError("KILN_REDIS_KEY_FILE needs KILN_REDIS_CERT_FILE (its certificate)")
        if self.webhook_proxy and not self.webhook_proxy.startswith("http://"):
            raise SettingsError("KILN_WEBHOOK_PROXY must be an http:// URL (host:port)")
        if not self.redis_url:
            if not is_redis_url(self.broker_url):
                raise SettingsError(
                    "KILN_REDIS_URL is required when KILN_BROKER_URL is not a redis:// URL"
                )
            object.__setattr__(self, "redis_url", self.broker_url)

    @property
    def webhook_lease_s(self) -> float:
        """How long a webhook may go unsettled before it is sent again (at least once)."""
        return self.webhook_timeout_s + 10

    @property
    def is_dev(self) -> bool:
        return self.profile == "dev"

    @property
    def effective_log_format(self) -> str:
        return self.log_format or ("text" if self.is_dev else "json")

    def redacted(self) -> dict[str, Any]:
        """The settings as plain values: secrets replaced by ``***``, and every URL-shaped
        value with its password and secret query values replaced (:func:`redact_url`)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if isinstance(value, str) and "://" in value:
                value = redact_url(value)
            elif f.name in SECRET_FIELDS and value:
                value = "***"
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


def env_lines(settings: Settings, *, secrets: bool = False) -> list[str]:
    """``KILN_NAME=value`` for the profile and each setting that differs from its default
    (that profile's): an env file
    another host of the same fleet starts from. Secrets are redacted as in
    :meth:`Settings.redacted` unless ``secrets``."""
    defaults = Settings(profile=settings.profile)
    shown = settings.redacted()
    out = []
    for f in dataclasses.fields(Settings):
        value = getattr(settings, f.name)
        if f.name == "extra" or (f.name != "profile" and value == getattr(defaults, f.name)):
            continue
        if not secrets:
            value = shown[f.name]
        if isinstance(value, bool):
            value = "true" if value else "false"
        out.append(f"KILN_{f.name.upper()}={value}")
    return out


REDIS_SCHEMES = ("redis://", "rediss://")  # what kombu and redis-py both accept


def is_redis_url(url: str) -> bool:
    """Whether a broker or store URL speaks the Redis protocol (Redis, Valkey, ...)."""
    return url.startswith(REDIS_SCHEMES)


# Query parameters whose values are secrets (``?password=``, ``&X-Amz-Signature=``, ...).
SECRET_QUERY_KEY = re.compile(r"(?i)pass|pwd|secret|token|key|sig|auth|credential|session")


def redact_url(url: str) -> str:
    """``redis://user:pw@host/0?password=x`` → ``redis://user:***@host/0?password=***``.

    The password of the user info (or a user name given alone, often a token) and the
    values of secret-looking query parameters are replaced; the rest stays readable.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        cred, _, host = netloc.rpartition("@")
        user, colon, _ = cred.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    query = "&".join(
        f"{k}=***" if sep and SECRET_QUERY_KEY.search(k) else f"{k}{sep}{v}"
        for k, sep, v in (pair.partition("=") for pair in parts.query.split("&") if pair)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The secret parts of a URL (user info password, secret query values), decoded."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = [unquote(parts.password or "")]
    if "@" in parts.netloc and parts.password is None:
        found.append(unquote(parts.username or ""))
    found += [v for k, v in parse_qsl(parts.query) if SECRET_QUERY_KEY.search(k)]
    return [s for s in found if s]


def _coerce(name: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise SettingsError(f"KILN_{name.upper()} must be true or false, got {raw!r}")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"KILN_{name.upper()} must be an integer, got {raw!r}") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"KILN_{name.upper()} must be a number, got {raw!r}") from None
    if isinstance(default, Path):
        return Path(raw).expanduser()
    return raw


def from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from ``KILN_*`` variables (``os.environ`` by default)."""
    env = os.environ if env is None else env
    defaults = Settings()
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        if f.name == "extra":
            continue
        key = f"KILN_{f.name.upper()}"
        if key in env:
            values[f.name] = _coerce(f.name, env[key], getattr(defaults, f.name))
    data_dir = values.get("data_dir", defaults.data_dir)
    if "models_dir" not in values:
        values["models_dir"] = Path(data_dir) / "models"
    if "models_dropin_dir" not in values:
        values["models_dropin_dir"] = Path(data_dir) / "models.d"
    values.update(overrides)
    return Settings(**values)


def dev_webhook_secret_path(data_dir: Path) -> Path:
    return Path(data_dir) / "webhook-secret"


def dev_webhook_secret(data_dir: Path) -> str:
    """The dev profile's webhook secret: made once, kept in ``<data_dir>/webhook-secret``."""
    import base64
    import secrets

    path = dev_webhook_secret_path(data_dir)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("whsec_" + base64.b64encode(secrets.token_bytes(24)).decode() + "\n")
        tmp.chmod(0o600)
        tmp.replace(path)
    return path.read_text().strip()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once (dev: a webhook secret is made on first use)."""
    settings = from_env()
    if settings.is_dev and not settings.webhook_secret:
        secret = dev_webhook_secret(settings.data_dir)
        settings = dataclasses.replace(settings, webhook_secret=secret)
    return settings
