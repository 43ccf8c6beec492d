"""The web page at ``/`` and the interactive API docs at ``/docs``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, send_from_directory

blp = Blueprint("web", __name__)


@blp.get("/")
def index() -> Any:
    return render_template("index.html")


@blp.get("/docs")
def docs() -> Any:
    return render_template("docs.html")


@blp.get("/docs/assets/<path:name>")
def docs_assets(name: str) -> Any:
    from swagger_ui_bundle import swagger_ui_path  # Swagger UI, served offline

    return send_from_directory(swagger_ui_path, name, max_age=86400)
