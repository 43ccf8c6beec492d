"""The classic tutorial API (``POST /generate``, ``GET /job/<id>``, ``GET /health``).

For clients of the widely copied "FastAPI + RQ + SDXL" design: its field names and its
states (``queued | processing | completed | failed``), mapped onto Kiln's one job schema
and job record. Sizes, steps and guidance are bounded by the model's own limits (GET
/v1/models), exactly as on the native and OpenAI doors, and bad input gets the same
reasons; the answer keeps the native door's 422 shape.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from app.jsonbody import BoundedJsonParser
from app.schemas import ApiErrorSchema
from app.service import get_job_or_404, job_request, service
from tasks.jobs.schema import JobSchema

blp = Blueprint("classic", __name__, description="Classic /generate API")
blp.ARGUMENTS_PARSER = BoundedJsonParser()

STATES = {
    "queued": "queued",
    "running": "processing",
    "succeeded": "completed",
    "failed": "failed",
    "canceled": "failed",
}


class GenerateSchema(JobSchema):
    """The fields the classic door takes, each the job schema's own (it never had n,
    scheduler or loras); a field added to the job schema is not taken here unless listed."""

    class Meta(JobSchema.Meta):
        fields = (
            "prompt",
            "negative_prompt",
            "model",
            "width",
            "height",
            "steps",
            "guidance_scale",
            "seed",
            "webhook_url",
            "output_format",
            "output_compression",
            "image",
            "mask",
            "strength",
        )

    model = fields.String(
        load_default="sdxl", validate=validate.Length(min=1, max=200), metadata={"example": "sdxl"}
    )


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


@blp.route("/generate")
class Generate(MethodView):
    @blp.arguments(GenerateSchema)
    @blp.response(200, GenerateResponseSchema)
    @blp.alt_response(422, schema=ApiErrorSchema)
    def post(self, data: dict[str, Any]) -> Any:
        """Queue a generation; poll GET /job/<job_id>."""
        done = service().accept(job_request(data, "classic"))
        record = done.record
        return {"job_id": record["id"], "status": "queued", "estimated_time": record.get("eta_s")}


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
