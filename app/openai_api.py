"""``POST /v1/images/generations``: the OpenAI Images API, served by Kiln.

The official ``openai`` SDK pointed at ``http://<kiln>/v1`` works unchanged:

    client = OpenAI(base_url="http://localhost:8000/v1", api_key="kiln")
    client.images.generate(model="sdxl", prompt="a red fox", size="1024x1024")

OpenAI's ``prompt``, ``model``, ``n``, ``size`` (``WxH`` or ``auto``), ``response_format``,
``output_format`` (png | jpeg | webp), ``output_compression`` (0–100) and ``user`` (not
used) are honoured; Kiln's extras (``negative_prompt``, ``steps``, ``guidance_scale``,
``scheduler``, ``seed``, ``loras``, ``width``/``height``) ride in the SDK's ``extra_body``
and arrive as top-level fields. Each field shared with ``/v1/jobs`` is validated by the
same schema and model limits, so the reasons match; any other field is a 400 naming it
in ``param`` (the door never drops what it was asked).

The call is synchronous: it waits for the job up to ``KILN_SYNC_TIMEOUT_S``, then
answers 504 with the job id to poll at ``/v1/jobs/<id>``. Each wait holds a thread, so
at most ``KILN_SYNC_MAX_WAITS`` wait per API process
(``503`` with ``Retry-After`` past that, before any job is made; ``app.streams``).
Errors use OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import base64
from typing import Any

from flask import current_app, jsonify
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, ValidationError, fields, validate, validates_schema
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

from app.errors import from_http, retry_after, store_unavailable
from app.jsonbody import BoundedJsonParser
from app.limits import limit_key
from app.service import job_request, service, settings
from app.streams import wait_slots
from config.errors import InvalidInput, KilnError, invalid_input
from tasks.jobs.schema import JobSchema

blp = Blueprint(
    "openai", __name__, url_prefix="/v1/images", description="OpenAI-compatible image generation"
)
blp.ARGUMENTS_PARSER = BoundedJsonParser()


OPENAI_FIELDS = (
    "prompt",
    "model",
    "n",
    "size",
    "response_format",
    "output_format",
    "output_compression",
)
EXTRAS = (
    "negative_prompt",
    "steps",
    "guidance_scale",
    "scheduler",
    "seed",
    "loras",
    "width",
    "height",
)


class ImagesRequestSchema(JobSchema):
    """OpenAI's parameters that Kiln honours, plus Kiln's extras (``extra_body``).

    Every field shared with the job schema is the job schema's own field, so a bad value
    gets the same reason here as on ``/v1/jobs``; anything else is refused, by name.
    """

    class Meta(JobSchema.Meta):
        fields: tuple[str, ...] = (*OPENAI_FIELDS, "user", *EXTRAS)

    error_messages = {
        "unknown": "unknown parameter; this endpoint takes "
        + ", ".join((*OPENAI_FIELDS, "user", *EXTRAS))
    }

    size = fields.String(
        load_default=None,
        validate=validate.Regexp(
            r"^(auto|\d{1,5}x\d{1,5})$", error="must be WIDTHxHEIGHT (e.g. 1024x1024) or auto"
        ),
        metadata={"example": "64x64", "description": "auto: the model's default size"},
    )
    response_format = fields.String(
        load_default="url", validate=validate.OneOf(["url", "b64_json"])
    )
    user = fields.String(load_default=None, metadata={"description": "accepted and not used"})

    @validates_schema
    def _one_size(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("size") and (data.get("width") is not None or data.get("height") is not None):
            raise ValidationError("give size, or width and height, not both", "size")


class ImageDataSchema(Schema):
    url = fields.String()
    b64_json = fields.String()
    revised_prompt = fields.String()


class OpenAIErrorDetailSchema(Schema):
    message = fields.String()
    type = fields.String()
    param = fields.String(allow_none=True)
    code = fields.String(allow_none=True)


class OpenAIErrorSchema(Schema):
    error = fields.Nested(OpenAIErrorDetailSchema)


class ImagesResponseSchema(Schema):
    created = fields.Integer()
    data = fields.List(fields.Nested(ImageDataSchema))
    output_format = fields.String()


def openai_error(
    message: str,
    status: int,
    *,
    param: str | None = None,
    kind: str = "invalid_request_error",
    code: str | None = None,
) -> Any:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return jsonify(body), status


@blp.errorhandler(KilnError)
def _kiln(exc: KilnError) -> Any:
    param = next(iter(exc.fields), None)
    kind = "server_error" if exc.status >= 500 else "invalid_request_error"
    body, status = openai_error(
        exc.message, exc.status if exc.status != 422 else 400, param=param, kind=kind, code=exc.code
    )
    retry_after(body, exc)
    return body, status


@blp.errorhandler(RedisError)
def _redis(exc: RedisError) -> Any:
    return _kiln(store_unavailable(exc))


@blp.errorhandler(ValidationError)
def _validation(exc: ValidationError) -> Any:
    return _kiln(invalid_input(exc.messages))


@blp.errorhandler(HTTPException)
def _http(exc: HTTPException) -> Any:
    data = getattr(exc, "data", None) or {}
    if "messages" in data:
        return _kiln(invalid_input(data["messages"]))
    if (typed := from_http(exc)) is not None:
        return _kiln(typed)
    return openai_error(exc.description or exc.name, exc.code or 500)


def to_job(data: dict[str, Any]) -> dict[str, Any]:
    """The loaded request as job data: ``size`` becomes width and height."""
    job = {k: v for k, v in data.items() if k not in ("size", "response_format", "user")}
    if data.get("size") and data["size"] != "auto":
        width, height = (int(v) for v in data["size"].split("x"))
        job.update(width=width, height=height)
    return job


def sized_as_asked(exc: InvalidInput, data: dict[str, Any]) -> InvalidInput:
    """A size error is named ``size`` when the request gave a size (this door's own
    name for width and height)."""
    sized = {"width", "height"} & set(exc.fields)
    if not (data.get("size") and sized):
        return exc
    fields_ = {k: v for k, v in exc.fields.items() if k not in sized}
    fields_["size"] = [m for k in sorted(sized) for m in exc.fields[k]]
    return invalid_input(fields_)


@blp.route("/generations")
class Generations(MethodView):
    @blp.arguments(ImagesRequestSchema, location="json")
    @blp.response(200, ImagesResponseSchema)
    @blp.alt_response(400, schema=OpenAIErrorSchema, description="Invalid request")
    @blp.alt_response(429, schema=OpenAIErrorSchema, description="Rate limited")
    @blp.alt_response(500, schema=OpenAIErrorSchema, description="The job failed")
    @blp.alt_response(
        503,
        schema=OpenAIErrorSchema,
        description="Broker unavailable, or every synchronous slot of this server is taken "
        "(Retry-After)",
    )
    @blp.alt_response(
        504,
        schema=OpenAIErrorSchema,
        description="Still running after KILN_SYNC_TIMEOUT_S; code is the job id",
    )
    def post(self, data: dict[str, Any]) -> Any:
        """Create images (synchronous; 504 with the job id past the timeout)

        Takes OpenAI's prompt, model, n, size, response_format, output_format,
        output_compression and user, and Kiln's extras in the SDK's extra_body:
        negative_prompt, steps, guidance_scale, scheduler, seed, loras, width, height.
        Any other field is a 400 naming it.
        """
        return answer(data)


def answer(data: dict[str, Any]) -> Any:
    """Submit the job, wait for it, and answer in OpenAI's shape (images or an error)."""
    d = service()
    s = settings()
    with wait_slots(current_app, s.sync_max_waits, s.key_slot_share).held(limit_key()):
        try:
            accepted = d.accept(job_request(to_job(data), "openai"))
        except InvalidInput as exc:
            raise sized_as_asked(exc, data) from None
        record, params = accepted.record, accepted.params
        done = d.wait(record["id"], timeout=s.sync_timeout_s) or record
    if done.get("status") != "succeeded":
        if done.get("status") in {"queued", "running"}:
            return openai_error(
                f"job {record['id']} is still {done['status']}; poll /v1/jobs/{record['id']}",
                504,
                kind="timeout",
                code=record["id"],
            )
        err = done.get("error") or {}
        return openai_error(
            err.get("message", "generation failed"),
            500,
            kind="server_error",
            code=err.get("code"),
        )
    out = []
    for image in done["images"]:
        item: dict[str, Any] = {"revised_prompt": data["prompt"]}
        if data["response_format"] == "b64_json":
            item["b64_json"] = base64.b64encode(d.storage.read(image["key"])).decode()
        else:
            item["url"] = image["url"]
        out.append(item)
    return {
        "created": int(done.get("created_at") or 0),
        "data": out,
        "output_format": params["output_format"],
    }
