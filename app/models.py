"""``/v1/models``: what this fleet serves and what each model accepts."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from app.schemas import ModelListSchema
from app.service import service
from tasks.messaging.names import queue_for

blp = Blueprint("models", __name__, url_prefix="/v1/models", description="Served models")


@blp.route("")
class Models(MethodView):
    @blp.response(200, ModelListSchema)
    def get(self) -> Any:
        """Models, their families, defaults and limits (stand-ins are marked)."""
        models = service().registry.values()
        return {
            "object": "list",
            "data": [{**m.describe(), "queue": queue_for(m.name)} for m in models],
        }
