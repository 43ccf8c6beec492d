"""``/v1/jobs``: submit, read, cancel, and follow a job's live events."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from flask import Response, current_app, g, request, stream_with_context, url_for
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import RAISE

from app.auth import owner
from app.forms import JsonOrFormParser, comparable
from app.limits import limit_key
from app.schemas import (
    ApiErrorSchema,
    CancelSchema,
    JobListQuerySchema,
    JobListSchema,
    JobSchema,
    JobViewSchema,
)
from app.service import get_job_or_404, idempotency_key, job_request, service, settings
from app.streams import stream_slots
from config.errors import InvalidInput, JobStoreUnavailable
from tasks.jobs.listing import list_jobs
from tasks.jobs.records import public_view

blp = Blueprint("jobs", __name__, url_prefix="/v1/jobs", description="Image jobs")
blp.ARGUMENTS_PARSER = JsonOrFormParser()  # a job with image files may come as a form

# The form alternative to the JSON body: the same fields, image and mask as file parts.
FORM_DOC = {
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "description": "The JSON body's fields as form fields (loras as JSON); "
                "image and mask as file parts, URLs or a JSON job reference",
                "properties": {
                    "image": {"type": "string", "format": "binary"},
                    "mask": {"type": "string", "format": "binary"},
                    "prompt": {"type": "string"},
                    "model": {"type": "string"},
                    "strength": {"type": "number"},
                },
            }
        }
    }
}


def job_view(record: dict[str, Any]) -> dict[str, Any]:
    out = public_view(record)
    out["urls"] = {
        "self": url_for("jobs.Job", job_id=record["id"]),
        "events": url_for("jobs.events", job_id=record["id"]),
    }
    return out


@blp.route("")
class Jobs(MethodView):
    @blp.arguments(JobListQuerySchema, location="query", as_kwargs=True, unknown=RAISE)
    @blp.response(200, JobListSchema)
    @blp.alt_response(422, schema=ApiErrorSchema, description="Invalid filter; fields are named")
    def get(self, **query: Any) -> Any:
        """The jobs made with this API key, newest first, a page at a time.

        Filter with status and model; pass next_after as after to get the next page
        (while has_more is true). A page reads a bounded part of the key's jobs, so a
        filter that matches few may give short or empty pages that still have more.
        Jobs are listed until their records expire.
        """
        d = service()
        page = list_jobs(d.store, owner(), **query)
        data = [job_view(d.view(record)) for record in page.jobs]
        return {
            "object": "list",
            "data": data,
            "has_more": page.has_more,
            "next_after": page.cursor,
        }

    @blp.arguments(JobSchema, example={"prompt": "a red fox", "model": "tiny-sd", "seed": 0})
    @blp.response(202, JobViewSchema)
    @blp.alt_response(
        200, schema=JobViewSchema, description="Same Idempotency-Key and body: the job made first"
    )
    @blp.alt_response(
        409, schema=ApiErrorSchema, description="Idempotency-Key reused with another body"
    )
    @blp.alt_response(422, schema=ApiErrorSchema, description="Invalid input; fields are named")
    @blp.doc(requestBody=FORM_DOC)
    def post(self, data: dict[str, Any]) -> Any:
        """Submit a job; poll urls.self or follow urls.events until it ends

        An image (and a mask) turns it into img2img (inpainting): each is an https URL, a
        data:image/...;base64 URL, or a finished job's output {"job": id, "index": 0}.
        The same fields may come as a multipart/form-data form, image and mask as file
        parts.

        Send an Idempotency-Key header to make retries safe: the same key and body
        return the same job (200) instead of a new one. Invalid input is a 422 whose
        fields name each bad field; the limits are the model's own (GET /v1/models).
        """
        done = service().accept(
            job_request(
                data, "rest", idempotency_key=idempotency_key(), body=body_for_idempotency()
            )
        )
        view = job_view(done.record)
        return view, 202 if done.created else 200, {"Location": view["urls"]["self"]}


def body_for_idempotency() -> Any:
    """What an Idempotency-Key compares: the JSON body, or the form with file hashes."""
    if "form_payload" in g:  # the form JsonOrFormParser read
        return comparable(g.form_payload)
    return request.get_json(silent=True)


@blp.route("/<string:job_id>")
class Job(MethodView):
    @blp.response(200, JobViewSchema)
    @blp.alt_response(404, schema=ApiErrorSchema)
    def get(self, job_id: str) -> Any:
        """A job's record: status, progress, queue position and ETA, images and seeds."""
        return job_view(get_job_or_404(job_id))

    @blp.response(200, CancelSchema, description="A queued job was canceled; it will not run")
    @blp.alt_response(
        202, schema=CancelSchema, description="A running job will stop at its next denoising step"
    )
    @blp.alt_response(404, schema=ApiErrorSchema)
    @blp.alt_response(409, schema=ApiErrorSchema, description="The job already ended")
    def delete(self, job_id: str) -> Any:
        """Cancel a job."""
        get_job_or_404(job_id)
        out = service().cancel(job_id)
        return out, 200 if out["status"] == "canceled" else 202


EVENT_ID = re.compile(r"\d{1,20}-\d{1,20}\Z")


def event_cursor() -> str:
    """Where a resumed stream goes on: the ``Last-Event-ID`` header (or ``last_event_id``
    in the query), an event id as the stream gave it; ``0-0`` for the whole stream."""
    for name, value in (
        ("Last-Event-ID", request.headers.get("Last-Event-ID")),
        ("last_event_id", request.args.get("last_event_id")),
    ):
        if value:
            if not EVENT_ID.match(value):
                reason = "must be an event id this stream sent (like 1700000000000-0)"
                raise InvalidInput(f"invalid {name}: {reason}", fields={name: [reason]})
            return value
    return "0-0"


def sse(event_id: str, event: str, data: Any) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@blp.route("/<string:job_id>/events", endpoint="events")
@blp.doc(
    responses={
        "200": {
            "description": "text/event-stream: queued, received, started, progress, "
            "succeeded | failed | canceled",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        "404": {"description": "No such job"},
        "503": {"description": "Too many open streams; retry or poll"},
    }
)
def events(job_id: str) -> Any:
    """Server-Sent Events of one job, in order, ending with its terminal state.

    Resumable: send a Last-Event-ID header to get only the events after it.
    """
    d = service()
    get_job_or_404(job_id)
    after = event_cursor()
    max_s = settings().sse_max_s

    def stream() -> Iterator[str]:
        yield "retry: 1000\n\n"
        try:
            for item in d.follow(job_id, after=after, timeout=max_s):
                yield ": keep-alive\n\n" if item is None else sse(*item)
        except JobStoreUnavailable as exc:  # the stream ends with why; a client resumes
            data = {**exc.to_dict(), "retry_after_s": exc.retry_after_s}
            yield f"event: error\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    response = Response(
        stream_with_context(stream()), mimetype="text/event-stream", headers=headers
    )
    s = settings()
    return stream_slots(current_app, s.sse_max_streams, s.key_slot_share).hold(
        response, limit_key()
    )
