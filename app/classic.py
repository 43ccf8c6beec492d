"""The classic tutorial API (``POST /generate``, ``GET /job/<id>``, ``GET /health``).

For clients of the widely copied "FastAPI + RQ + SDXL" design: its field names, its
states (``queued | processing | completed | failed``) and its bounds (prompt 1–2000,
width/height 512–2048 unless the model allows smaller, steps 10–50, guidance 1–20),
mapped onto Kiln's one job schema and job record.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import RAISE, Schema, fields, validate

from app.auth import owner
from app.metrics import job_submitted
from app.schemas import ApiErrorSchema
from app.service import get_job_or_404, service
from config.errors import invalid_input

blp = Blueprint("classic", __name__, description="Classic /generate API")

STATES = {
    "queued": "queued",
    "running": "processing",
    "succeeded": "completed",
    "failed": "failed",
    "canceled": "failed",
}


class GenerateSchema(Schema):
    class Meta:
        unknown = RAISE

    prompt = fields.String(
        required=True, validate=validate.Length(min=1, max=2000), metadata={"example": "a red fox"}
    )
    negative_prompt = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(max=2000)
    )
    model = fields.String(load_default="sdxl")
    width = fields.Integer(load_default=None, strict=True)
    height = fields.Integer(load_default=None, strict=True)
    steps = fields.Integer(load_default=None, strict=True, validate=validate.Range(10, 50))
    guidance_scale = fields.Float(
        load_default=None, allow_nan=False, validate=validate.Range(1, 20)
    )
    seed = fields.Integer(load_default=None, allow_none=True, strict=True)
    webhook_url = fields.Url(load_default=None, allow_none=True, require_tld=False)
    output_format = fields.String(load_default=None)  # png | jpeg | webp: the job schema checks
    output_compression = fields.Integer(load_default=None, allow_none=True, strict=True)


class GenerateResponseSchema(Schema):
    job_id = fields.String()
    status = fields.String()
    estimated_time = fields.Float(allow_none=True)


class ClassicJobSchema(Schema):
    job_id = fields.String()
    status = fields.String()
    image_url = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    created_at = fields.String(allow_none=True)
    completed_at = fields.String(allow_none=True)


class ClassicHealthSchema(Schema):
    status = fields.String()
    queue_length = fields.Integer()
    workers = fields.Integer()


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else None


def check_size(data: dict[str, Any]) -> None:
    registry = service().registry
    model = registry.get(data["model"]) if data["model"] in registry else None
    low = 512 if model is None else min(512, model.min_size)
    errors = {
        name: [f"must be between {low} and 2048"]
        for name in ("width", "height")
        if data.get(name) is not None and not low <= data[name] <= 2048
    }
    if errors:
        raise invalid_input(errors)


@blp.route("/generate")
class Generate(MethodView):
    @blp.arguments(GenerateSchema)
    @blp.response(200, GenerateResponseSchema)
    @blp.alt_response(422, schema=ApiErrorSchema)
    def post(self, data: dict[str, Any]) -> Any:
        """Queue a generation; poll ``GET /job/<job_id>``."""
        check_size(data)
        d = service()
        payload = {k: v for k, v in data.items() if v is not None}
        params = d.validate(payload)
        record, _ = d.submit(params, owner=owner(), source="classic")
        job_submitted(params["model"], "classic")
        view = d.get(record["id"]) or record
        return {"job_id": record["id"], "status": "queued", "estimated_time": view.get("eta_s")}


@blp.route("/job/<string:job_id>")
class ClassicJob(MethodView):
    @blp.response(200, ClassicJobSchema)
    @blp.alt_response(404, schema=ApiErrorSchema)
    def get(self, job_id: str) -> Any:
        """The job in the classic shape."""
        record = get_job_or_404(job_id)
        images = record.get("images") or []
        err = record.get("error")
        return {
            "job_id": job_id,
            "status": STATES.get(record.get("status", ""), "failed"),
            "image_url": images[0]["url"] if images else None,
            "error": err.get("message") if isinstance(err, dict) else err,
            "created_at": iso(record.get("created_at")),
            "completed_at": iso(record.get("completed_at")),
        }


@blp.route("/health")
class ClassicHealth(MethodView):
    @blp.response(200, ClassicHealthSchema)
    def get(self) -> Any:
        """Queue length and ready workers over all models."""
        d = service()
        return {
            "status": "healthy" if d.store.ping() else "unhealthy",
            "queue_length": sum(d.fleet.queue_depth(m) for m in d.registry),
            "workers": sum(d.fleet.ready_workers(m) for m in d.registry),
        }
