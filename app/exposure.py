"""What a configuration leaves open: the warnings ``kiln config`` prints.

Each line names the setting, what it leaves open and how to close it. A production
configuration made from ``deploy/`` (keys, Flower credentials, one shared webhook
secret, password-protected Redis) prints none.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from config.settings import Settings, SettingsError, dev_webhook_secret_path, url_secrets


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _inside(host: str) -> str:
    """``loopback`` or ``private`` for an address clients elsewhere cannot reach, else ''."""
    if _loopback(host):
        return "loopback"
    try:
        return "private" if ipaddress.ip_address(host).is_private else ""
    except ValueError:
        return ""


def image_url_warning(settings: Settings) -> str:
    """A warning when the API listens beyond this machine but the image URLs it gives
    name a loopback or private address (empty: none)."""
    if _loopback(settings.api_host):
        return ""
    if settings.public_base_url:
        name, url = "KILN_PUBLIC_BASE_URL", settings.public_base_url
    elif settings.s3_public_endpoint_url:
        name, url = "KILN_S3_PUBLIC_ENDPOINT_URL", settings.s3_public_endpoint_url
    else:
        name, url = "KILN_S3_ENDPOINT_URL", settings.s3_endpoint_url
    kind = _inside(_host(url))
    if not kind:
        return ""
    fix = "" if name != "KILN_S3_ENDPOINT_URL" else "; set KILN_S3_PUBLIC_ENDPOINT_URL"
    return (
        f"image URLs name {_host(url)} ({kind}, from {name}) while the API listens on "
        f"{settings.api_host}: clients beyond that network cannot fetch them{fix}"
    )


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def open_doors(settings: Settings) -> list[str]:
    """One warning per thing this configuration leaves open (empty: nothing)."""
    from app.auth import load_keys

    out: list[str] = []
    try:
        keys = load_keys(settings)
    except SettingsError as exc:
        out.append(f"API keys do not parse, so the API will not start: {exc}")
        keys = {}
    if settings.auth == "off":
        out.append(
            f"KILN_AUTH=off: the API serves anyone who can reach it, without keys "
            f"({settings.profile} profile)"
        )
    elif not keys and settings.is_dev:
        out.append(
            "no API keys: the API serves only clients on this machine (loopback); make keys "
            "with `kiln keys create NAME` and set KILN_API_KEYS before exposing it"
        )
    elif not keys:
        out.append(f"no API keys: the API refuses to start in the {settings.profile} profile")
    if not settings.flower_basic_auth:
        out.append(
            "no KILN_FLOWER_BASIC_AUTH: Flower "
            + ("is open to whoever reaches it" if settings.is_dev else "refuses to start")
        )
    if not _loopback(settings.flower_host):
        out.append(
            f"Flower binds {settings.flower_host}: its /metrics and /healthcheck answer "
            "without credentials; keep a guarding proxy in front (deploy/nginx)"
        )
    secret_file = dev_webhook_secret_path(settings.data_dir)
    if not settings.webhook_secret:
        out.append("no KILN_WEBHOOK_SECRET: webhooks are off (jobs asking for one are refused)")
    elif (
        settings.is_dev
        and secret_file.exists()
        and secret_file.read_text().strip() == settings.webhook_secret
    ):
        out.append(
            f"the webhook secret is this host's own ({secret_file}): give every host one "
            "shared KILN_WEBHOOK_SECRET"
        )
    if settings.webhook_allow_private:
        out.append(
            "KILN_WEBHOOK_ALLOW_PRIVATE=true: webhooks may reach private and loopback "
            "addresses (this fleet's inside network)"
        )
    for name in ("broker_url", "redis_url"):
        url = getattr(settings, name)
        plain = url.startswith(("redis://", "amqp://")) and not url_secrets(url)
        if plain and not _loopback(_host(url)):
            out.append(f"KILN_{name.upper()}: {_host(url)} is reached without a password")
    s3 = settings.s3_endpoint_url
    if s3.startswith("http://") and not _loopback(_host(s3)):
        out.append(f"KILN_S3_ENDPOINT_URL: {_host(s3)} is reached without TLS (http://)")
    if settings.public_base_url:
        out.append("KILN_PUBLIC_BASE_URL is set: image URLs are public and never expire")
    if warning := image_url_warning(settings):
        out.append(warning)
    return out
