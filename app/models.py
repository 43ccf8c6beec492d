"""``/v1/models``: what this fleet serves and what each model accepts.

``GET /v1/models/<id>`` is the OpenAI SDK's ``models.retrieve``; an unknown id is a
404 in OpenAI's error shape. ``dtype`` is what the model's ready workers report they
run (an fp16 entry runs in fp32 on a CPU worker; ``dtype_source: workers``), or the
configured one while no worker is up (``dtype_source: models.yaml``). ``serving``
says how the fleet serves it now: ``resident`` (a ready worker holds it), ``on_demand``
(a worker serving several models loads it when its jobs come, in about ``load_s``) or
``none``.
"""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from app.openai_api import OpenAIErrorSchema, openai_error
from app.schemas import ModelListSchema, ModelSchema
from app.service import service
from pipelines.registry import Model
from tasks.messaging.names import queue_for

blp = Blueprint("models", __name__, url_prefix="/v1/models", description="Served models")


def describe(model: Model) -> dict[str, Any]:
    """The model's public view, with the dtype its workers really run."""
    out: dict[str, Any] = {**model.describe(), "owned_by": "kiln", "queue": queue_for(model.name)}
    out["dtype_configured"] = model.spec.dtype
    fleet = service().fleet
    try:
        running = fleet.worker_dtypes(model.name)
        resident = fleet.ready_workers(model.name)
        standby, load_s = fleet.standby(model.name)
    except Exception:  # job store down: the configured dtype, said as such
        running, resident, standby, load_s = {}, 0, 0, None
    out["workers"] = {"resident": resident, "standby": standby}
    out["serving"] = "resident" if resident else "on_demand" if standby else "none"
    out["load_s"] = load_s
    if running:
        out["dtype"] = max(running, key=lambda d: running[d])
        out["dtype_source"] = "workers"
        out["worker_dtypes"] = running
    else:
        out["dtype_source"] = "models.yaml"
    return out


@blp.route("")
class Models(MethodView):
    @blp.response(200, ModelListSchema)
    def get(self) -> Any:
        """Models, their families, defaults and limits (stand-ins are marked)"""
        return {"object": "list", "data": [describe(m) for m in service().registry.values()]}


@blp.route("/<string:model_id>")
class ModelById(MethodView):
    @blp.response(200, ModelSchema)
    @blp.alt_response(404, schema=OpenAIErrorSchema, description="No such model (OpenAI shape)")
    def get(self, model_id: str) -> Any:
        """One model (the OpenAI SDK's models.retrieve)"""
        registry = service().registry
        if model_id not in registry:
            return openai_error(
                f"The model {model_id!r} does not exist; available: {', '.join(registry)}",
                404,
                param="model",
                code="model_not_found",
            )
        return describe(registry[model_id])
