"""``/v1/jobs``: submit a job, read it back."""

from __future__ import annotations

from typing import Any

from flask import url_for
from flask.views import MethodView
from flask_smorest import Blueprint

from app.schemas import ApiErrorSchema, JobSchema, JobViewSchema
from app.service import dispatcher
from config.errors import NotFound
from tasks.schema import validate_job

blp = Blueprint("jobs", __name__, url_prefix="/v1/jobs", description="Text-to-image jobs")

PUBLIC = (
    "id", "status", "model", "params", "seeds", "created_at", "started_at", "completed_at",
    "progress", "images", "error", "attempts", "webhook", "batch_id", "batch_size", "batches",
)


def job_view(record: dict[str, Any]) -> dict[str, Any]:
    out = {k: record.get(k) for k in PUBLIC}
    out["queue_position"] = None
    out["eta_s"] = None
    out["urls"] = {
        "self": url_for("jobs.Job", job_id=record["id"], _external=False),
    }
    return out


def get_job_or_404(job_id: str) -> dict[str, Any]:
    record = dispatcher().get(job_id)
    if record is None:
        raise NotFound(f"no job {job_id!r}", fields={"job_id": [job_id]})
    return record


@blp.route("")
class Jobs(MethodView):
    @blp.arguments(JobSchema, example={"prompt": "a red fox", "model": "tiny-sd", "seed": 0})
    @blp.response(202, JobViewSchema)
    @blp.alt_response(422, schema=ApiErrorSchema, description="Invalid input; fields are named")
    def post(self, data: dict[str, Any]) -> Any:
        """Submit a job; poll its ``urls.self`` until it is ``succeeded``."""
        d = dispatcher()
        params = validate_job(data, d.registry)
        record = d.submit(params)
        return job_view(record), 202, {"Location": url_for("jobs.Job", job_id=record["id"])}


@blp.route("/<string:job_id>")
class Job(MethodView):
    @blp.response(200, JobViewSchema)
    @blp.alt_response(404, schema=ApiErrorSchema)
    def get(self, job_id: str) -> Any:
        """A job's record: status, progress, images with their seeds."""
        return job_view(get_job_or_404(job_id))
