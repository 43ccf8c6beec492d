"""The one object every blueprint uses to reach the workers (through ``tasks``)."""

from __future__ import annotations

from flask import Flask, current_app

from config.settings import Settings
from tasks.submit import Dispatcher


def init_service(app: Flask, settings: Settings) -> None:
    app.extensions["kiln"] = Dispatcher(settings)


def dispatcher() -> Dispatcher:
    return current_app.extensions["kiln"]


def settings() -> Settings:
    return current_app.config["KILN_SETTINGS"]
