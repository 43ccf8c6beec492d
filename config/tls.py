"""TLS to the job store, the broker and S3: the options each client takes, and the
check every serving process makes at start.

A ``rediss://`` URL (broker or job store) is verified against ``KILN_REDIS_CA_FILE``
(the system's CAs when empty) and presents ``KILN_REDIS_CERT_FILE`` /
``KILN_REDIS_KEY_FILE`` when set; an ``https://`` S3 endpoint is verified against
``KILN_S3_CA_BUNDLE``. redis-py, kombu's broker transport and Celery's result backend
all take the same four options (:func:`redis_ssl_options`).

A wrong CA, certificate or key is a setting to fix, not an outage to ride out: at
start, :func:`check_tls` makes one handshake with each TLS endpoint and raises
:class:`SettingsError` with one line naming the setting and the reason. An endpoint
that does not answer at all is left to the clients' own retries.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

from config.errors import SettingsError
from config.settings import Settings

CHECK_TIMEOUT_S = 3.0


def redis_ssl_options(settings: Settings) -> dict[str, Any]:
    """``broker_use_ssl`` / ``redis_backend_use_ssl`` / redis-py keywords for rediss://."""
    return {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": settings.redis_ca_file or None,
        "ssl_certfile": settings.redis_cert_file or None,
        "ssl_keyfile": settings.redis_key_file or None,
    }


def redis_client_options(settings: Settings, url: str) -> dict[str, Any]:
    """redis-py keywords for a connection to ``url``: the TLS options for rediss://,
    none for redis:// (a plain connection takes no ``ssl_*`` keyword)."""
    return redis_ssl_options(settings) if url.startswith("rediss://") else {}


def s3_verify(settings: Settings) -> str | None:
    """boto3's ``verify=``: the CA bundle, or None for the system's."""
    return settings.s3_ca_bundle or None


def _redis_context(settings: Settings) -> ssl.SSLContext:
    """As redis-py builds it: the system's CAs and the CA file, hostnames checked."""
    ctx = ssl.create_default_context()
    if settings.redis_ca_file:
        ctx.load_verify_locations(settings.redis_ca_file)
    if settings.redis_cert_file:
        ctx.load_cert_chain(settings.redis_cert_file, settings.redis_key_file or None)
    return ctx


def _s3_context(settings: Settings) -> ssl.SSLContext:
    """As botocore verifies: the CA bundle alone when one is set, else the system's."""
    return ssl.create_default_context(cafile=settings.s3_ca_bundle or None)


def tls_endpoints(settings: Settings) -> list[tuple[str, str, int, str]]:
    """``(setting, host, port, kind)`` for each TLS endpoint, once each."""
    found: list[tuple[str, str, int, str]] = []
    for name, default_port, kind in (
        ("broker_url", 6379, "redis"),
        ("redis_url", 6379, "redis"),
        ("s3_endpoint_url", 443, "s3"),
    ):
        parts = urlsplit(getattr(settings, name))
        if parts.scheme not in ("rediss", "https") or not parts.hostname:
            continue
        where = (parts.hostname, parts.port or default_port)
        if all((h, p) != where for _, h, p, _ in found):
            found.append((name, *where, kind))
    return found


def _reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    return str(exc.reason or exc).lower().replace("_", " ")


def check_tls(settings: Settings, *, timeout: float = CHECK_TIMEOUT_S) -> None:
    """One handshake with each TLS endpoint; a refused one raises :class:`SettingsError`
    (one line). Unreachable endpoints pass: they are down, not misconfigured."""
    for name, host, port, kind in tls_endpoints(settings):
        setting = f"KILN_{name.upper()}"
        hint = (
            "KILN_REDIS_CA_FILE, KILN_REDIS_CERT_FILE and KILN_REDIS_KEY_FILE"
            if kind == "redis"
            else "KILN_S3_CA_BUNDLE"
        )
        try:
            ctx = _redis_context(settings) if kind == "redis" else _s3_context(settings)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"{setting}: cannot load TLS files ({hint}): {exc}") from None
        try:
            with (
                socket.create_connection((host, port), timeout=timeout) as raw,
                ctx.wrap_socket(raw, server_hostname=host) as conn,
            ):
                if kind == "redis":  # TLS 1.3 refuses a missing client certificate here
                    conn.sendall(b"PING\r\n")
                    conn.recv(64)
        except ssl.SSLError as exc:
            raise SettingsError(
                f"{setting}: TLS to {host}:{port} refused: {_reason(exc)} (check {hint})"
            ) from None
        except OSError:
            continue  # not answering: the clients' retries ride that out
