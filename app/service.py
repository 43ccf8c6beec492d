"""The one object every blueprint uses to reach the workers (through ``tasks``)."""

from __future__ import annotations

import logging

from flask import Flask, current_app

from config.settings import Settings
from tasks.submit import Dispatcher

log = logging.getLogger("kiln.api")


def init_service(app: Flask, settings: Settings) -> None:
    d = Dispatcher(settings)
    app.extensions["kiln"] = d
    if settings.s3_create_bucket:
        try:  # best effort: workers create it too; /readyz reports storage either way
            d.storage.ensure_bucket()
        except Exception as exc:
            log.warning(
                "bucket %s not checked at start: %s", settings.s3_bucket, type(exc).__name__
            )


def dispatcher() -> Dispatcher:
    return current_app.extensions["kiln"]


def settings() -> Settings:
    return current_app.config["KILN_SETTINGS"]
