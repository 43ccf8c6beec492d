"""Outside the dev and test profiles, Kiln refuses to serve on the dev fleet's defaults.

The dev profile points the broker, the job store and S3 at the embedded servers of
``make run`` (Valkey on 127.0.0.1, an S3 server with the ``kiln-dev`` credentials)
and makes its own webhook secret. A production process that finds one of these
(or nothing at all) would serve on a box-local Redis, sign webhooks with nothing and
store images with well-known credentials; it stops instead, with one line that names
every variable to set. Every serving entry point calls :func:`refuse_dev_defaults`:
the API factory, the Celery app (workers, the webhooks worker, Flower) and ``kiln
worker`` / ``kiln flower`` before they load anything.
"""

from __future__ import annotations

from config.errors import SettingsError
from config.settings import DEV_S3_ACCESS_KEY, DEV_S3_SECRET_KEY, Settings

SERVING_WITHOUT_CHECK = frozenset({"dev", "test"})


def dev_broker_url(settings: Settings) -> str:
    return f"redis://127.0.0.1:{settings.broker_port}/0"


def dev_s3_endpoint_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.s3_port}"


def dev_default_problems(settings: Settings) -> list[str]:
    """``KILN_NAME (why)`` for each setting left at the dev fleet's value or unset."""
    problems: list[str] = []
    if settings.broker_url == dev_broker_url(settings):
        problems.append("KILN_BROKER_URL (unset or the dev broker)")
    if settings.redis_url == dev_broker_url(settings):
        problems.append("KILN_REDIS_URL (unset or the dev job store)")
    if settings.s3_endpoint_url == dev_s3_endpoint_url(settings):
        problems.append("KILN_S3_ENDPOINT_URL (unset or the dev S3 server)")
    for name, value, dev in (
        ("KILN_S3_ACCESS_KEY", settings.s3_access_key, DEV_S3_ACCESS_KEY),
        ("KILN_S3_SECRET_KEY", settings.s3_secret_key, DEV_S3_SECRET_KEY),
    ):
        if not value:
            problems.append(f"{name} (unset)")
        elif value == dev:
            problems.append(f"{name} (the dev credential)")
    if not settings.webhook_secret:
        problems.append("KILN_WEBHOOK_SECRET (unset)")
    return problems


def refuse_dev_defaults(settings: Settings) -> None:
    """Raise :class:`SettingsError` (one line) outside dev and test when any
    :func:`dev_default_problems` remain."""
    if settings.profile in SERVING_WITHOUT_CHECK:
        return
    problems = dev_default_problems(settings)
    if problems:
        raise SettingsError(
            f"the {settings.profile} profile refuses the dev defaults; set " + ", ".join(problems)
        )
