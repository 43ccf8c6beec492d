"""Kiln's API: ``create_app()`` builds the Flask app (no torch is ever imported here).

gunicorn -k gthread --threads 32 --no-control-socket "app:create_app()"
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from flask import Flask

from config.production import refuse_dev_defaults
from config.settings import Settings, dev_webhook_secret_path, get_settings
from config.tls import check_tls


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Application factory; ``test_config`` may hold ``KILN_SETTINGS`` or Flask keys."""
    app = Flask(__name__)
    test_config = dict(test_config or {})
    given: Settings | None = test_config.pop("KILN_SETTINGS", None)
    settings = given or get_settings()  # dev: get_settings makes a webhook secret
    refuse_dev_defaults(settings)  # prod: never on the dev fleet's broker, S3 or secrets
    check_tls(settings)  # a wrong CA or client certificate stops it here, in one line
    if given is None and settings.is_dev:
        secret_file = dev_webhook_secret_path(settings.data_dir)
        if secret_file.exists() and secret_file.read_text().strip() == settings.webhook_secret:
            print(f"kiln: dev webhook secret (whsec_...) in {secret_file}", file=sys.stderr)
    app.config.update(
        KILN_SETTINGS=settings,
        API_TITLE="Kiln",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
    )
    app.config.update(test_config)
    from app.jsonbody import BoundedJSONProvider

    app.json = BoundedJSONProvider(app)  # every JSON body read with a depth bound
    app.json.sort_keys = False

    from app.auth import document_auth, init_auth
    from app.errors import register_error_handlers
    from app.limits import init_limits
    from app.metrics import init_metrics
    from app.openapi_docs import KilnApi, document_operations
    from app.service import init_service

    init_service(app, settings)
    init_metrics(app, app.extensions["kiln"])
    init_auth(app, settings)
    init_limits(app, settings)
    api = KilnApi(app, spec_kwargs={"info": {"description": "Self-hosted image generation."}})
    document_auth(api)
    document_operations(api)
    register_error_handlers(app)

    from app import (
        classic,
        health,
        jobs,
        models,
        openai_api,
        openai_edits,  # noqa: F401  (adds /v1/images/edits to the OpenAI blueprint)
        openapi_examples,
        web,
    )

    api.register_blueprint(jobs.blp)
    api.register_blueprint(models.blp)
    api.register_blueprint(openai_api.blp)
    api.register_blueprint(classic.blp)
    api.register_blueprint(health.blp)
    app.register_blueprint(web.blp)
    openapi_examples.add_examples(api)
    return app
