"""What ``/openapi.json`` says about each operation beyond its schemas.

- Every operation has an ``operationId`` (the names an OpenAPI client generator uses).
- Every error answer shows an example of what that status really answers, in the shape
  of its door: ``{"error": {"code", "message", "fields"}}`` on the native and classic
  doors, OpenAI's ``{"error": {"message", "type", "param", "code"}}`` on the OpenAI
  door (whose invalid input is a 400, never a 422).
- A new job's 202 shows a job that is ``queued``.

A unit test checks each point over the whole spec.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from apispec import BasePlugin
from flask_smorest import Api

from app.openapi_examples import ERROR_DETAIL, EXAMPLES, JOB_ID
from app.schemas import ApiErrorSchema


def native_error(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    detail: dict[str, Any] = {"code": code, "message": message}
    if fields:
        detail["fields"] = fields
    return {"error": detail}


def openai_error(message: str, *, kind: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


LIMIT = 1048576
TOO_LARGE = f"the request body is larger than the limit of {LIMIT} bytes (KILN_MAX_BODY_BYTES)"
NOT_JSON = "the request body must be JSON with Content-Type: application/json, got text/plain"
STEPS = "invalid steps: must be between 1 and 150 for tiny-sd, got 500"  # as the code says
QUOTA = "4 jobs of this API key are already queued or running"
# What each error status really answers, per door (``app.openapi_docs`` puts them in place).
NATIVE_ERRORS: dict[str, dict[str, Any]] = {
    "401": native_error("unauthorized", "an API key is required: Authorization: Bearer <key>"),
    "403": native_error(
        "forbidden", "this key lacks the 'generate' scope", {"scope": ["generate"]}
    ),
    "404": native_error("not_found", f"no job '{JOB_ID}'", {"job_id": [JOB_ID]}),
    "409": native_error(
        "conflict",
        "Idempotency-Key was used with a different request body",
        {"Idempotency-Key": ["reused with another body"]},
    ),
    "413": native_error("payload_too_large", TOO_LARGE, {"body": [f"at most {LIMIT} bytes"]}),
    "415": native_error(
        "unsupported_media_type", NOT_JSON, {"Content-Type": ["must be application/json"]}
    ),
    "422": {"error": ERROR_DETAIL},
    "429": native_error("rate_limited", QUOTA, {"quota": [4]}),
    "503": native_error("broker_unavailable", "the job could not be queued; try again"),
}
# Where one status means something else on one operation: (endpoint, method, status).
NATIVE_ERRORS_BY_OPERATION: dict[tuple[str, str, str], dict[str, Any]] = {
    ("jobs.Job", "delete", "409"): native_error(
        "conflict", "job already succeeded", {"status": ["succeeded"]}
    ),
    ("jobs.Jobs", "get", "422"): native_error(
        "invalid_request",
        "invalid status: Must be one of: queued, running, succeeded, failed, canceled.",
        {"status": ["Must be one of: queued, running, succeeded, failed, canceled."]},
    ),
    ("jobs.Jobs", "post", "415"): native_error(
        "unsupported_media_type",
        NOT_JSON.replace("application/json", "application/json or multipart/form-data"),
        {"Content-Type": ["must be application/json or multipart/form-data, got text/plain"]},
    ),
    ("jobs.events", "get", "503"): native_error(
        "too_many_streams",
        "64 event streams are open on this server; retry shortly or poll the job",
    ),
}
OPENAI_ERRORS: dict[str, dict[str, Any]] = {
    "400": openai_error(STEPS, kind="invalid_request_error", param="steps", code="invalid_request"),
    "401": openai_error(
        "an API key is required: Authorization: Bearer <key>",
        kind="invalid_request_error",
        param=None,
        code="unauthorized",
    ),
    "403": openai_error(
        "this key lacks the 'generate' scope",
        kind="invalid_request_error",
        param="scope",
        code="forbidden",
    ),
    "404": openai_error(
        "The model 'dall-e-3' does not exist; available: tiny-sd",
        kind="invalid_request_error",
        param="model",
        code="model_not_found",
    ),
    "413": openai_error(
        TOO_LARGE, kind="invalid_request_error", param="body", code="payload_too_large"
    ),
    "415": openai_error(
        NOT_JSON, kind="invalid_request_error", param="Content-Type", code="unsupported_media_type"
    ),
    "429": openai_error(QUOTA, kind="invalid_request_error", param="quota", code="rate_limited"),
    "500": openai_error(
        "one 1024x1024 image does not fit in device memory",
        kind="server_error",
        param=None,
        code="out_of_memory",
    ),
    "503": openai_error(
        "32 synchronous requests are open on this server; retry shortly or poll the job",
        kind="server_error",
        param=None,
        code="too_many_waits",
    ),
    "504": openai_error(
        f"job {JOB_ID} is still running; poll /v1/jobs/{JOB_ID}",
        kind="timeout",
        param=None,
        code=JOB_ID,
    ),
}


OPERATION_IDS = {
    ("jobs.Jobs", "post"): "createJob",
    ("jobs.Jobs", "get"): "listJobs",
    ("jobs.Job", "get"): "getJob",
    ("jobs.Job", "delete"): "cancelJob",
    ("jobs.events", "get"): "followJobEvents",
    ("models.Models", "get"): "listModels",
    ("models.ModelById", "get"): "retrieveModel",
    ("openai.Generations", "post"): "createImage",
    ("classic.Generate", "post"): "classicGenerate",
    ("classic.ClassicJob", "get"): "classicGetJob",
    ("classic.ClassicHealth", "get"): "classicHealth",
    ("health.Healthz", "get"): "healthz",
    ("health.Readyz", "get"): "readyz",
}
OPENAI_ERROR_REF = {"$ref": "#/components/schemas/OpenAIError"}
API_ERROR_REF = {"$ref": "#/components/schemas/ApiError"}
QUEUED = {
    **EXAMPLES["JobView"],
    "status": "queued",
    "seeds": [7, 8],
    "started_at": None,
    "completed_at": None,
    "progress": {"step": 0, "steps": 8},
    "images": [],
    "attempts": 0,
    "batch_id": None,
    "batch_size": None,
    "batches": [],
    "run_s": None,
    "upload_s": None,
    "worker": None,
    "load_wait_s": None,
    "queue_position": 3,
    "eta_s": 1.2,
}
CANCELING = {**EXAMPLES["Cancel"], "status": "canceling", "was": "running"}


def operation_id(endpoint: str, method: str) -> str:
    """The listed name, else one made from the endpoint (``jobs.Jobs`` get → jobsJobsGet)."""
    if (endpoint, method) in OPERATION_IDS:
        return OPERATION_IDS[(endpoint, method)]
    words = [w for w in re.split(r"[^A-Za-z0-9]+", f"{endpoint} {method}") if w]
    return words[0].lower() + "".join(w[:1].upper() + w[1:] for w in words[1:])


def is_openai(op: dict[str, Any]) -> bool:
    """Whether the operation's invalid-input answer is OpenAI's shape."""
    for code in ("400", "422"):
        resp = op.get("responses", {}).get(code) or op.get("responses", {}).get(int(code))
        if isinstance(resp, dict) and "OpenAIError" in repr(resp.get("content")):
            return True
    return False


def error_example(openai: bool, endpoint: str, method: str, code: str) -> dict | None:
    if openai:
        return OPENAI_ERRORS.get(code)
    return NATIVE_ERRORS_BY_OPERATION.get((endpoint, method, code)) or NATIVE_ERRORS.get(code)


def with_example(resp: dict[str, Any], example: Any, schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``resp`` (responses may share their content dicts) with ``example``."""
    out = {k: v for k, v in resp.items() if k != "content"}
    media = copy.copy((resp.get("content") or {}).get("application/json") or {})
    media.setdefault("schema", schema)
    media["example"] = example
    out["content"] = {"application/json": media}
    return out


class DocsPlugin(BasePlugin):
    """Runs after the other plugins: sets operationIds and per-status examples."""

    def operation_helper(
        self, path: str | None = None, operations: dict | None = None, **kwargs: Any
    ) -> None:
        endpoint = getattr(kwargs.get("rule"), "endpoint", "")
        for method, op in (operations or {}).items():
            op.setdefault("operationId", operation_id(endpoint, method))
            openai = is_openai(op)
            responses = op.setdefault("responses", {})
            if openai:
                responses.pop("422", None)  # this door answers invalid input with a 400
                responses.pop(422, None)
            if "requestBody" in op or any(
                p.get("in") == "body" for p in op.get("parameters", []) if isinstance(p, dict)
            ):
                responses.setdefault("415", {"description": "The body is not JSON"})
            for code in list(responses):
                resp = responses[code]
                if str(code)[0] not in "45":
                    continue
                if isinstance(resp, str):  # a flask-smorest response component: say ours
                    resp = {"description": resp.replace("_", " ").capitalize()}
                shape = repr(resp.get("content"))
                if "schemas/" in shape and "Error" not in shape:
                    continue  # an answer with a schema of its own (readyz's 503)
                door = "OpenAIError" in shape or (openai and "ApiError" not in shape)
                example = error_example(door, endpoint, method, str(code))
                if example is None:
                    continue
                if "text/event-stream" in shape:
                    resp = {k: v for k, v in resp.items() if k != "content"}
                responses[code] = with_example(
                    resp, example, OPENAI_ERROR_REF if door else API_ERROR_REF
                )
            for code in list(responses):
                if str(code) != "202":
                    continue
                if (endpoint, method) == ("jobs.Jobs", "post"):
                    responses[code] = with_example(responses[code], QUEUED, {})
                if (endpoint, method) == ("jobs.Job", "delete"):
                    responses[code] = with_example(responses[code], CANCELING, {})


class KilnApi(Api):
    """flask-smorest's Api, documenting Kiln's error shape (not its own) and no
    catch-all "default" answer."""

    ERROR_SCHEMA = ApiErrorSchema
    DEFAULT_ERROR_RESPONSE_NAME = None


def document_operations(api: Api) -> None:
    """Call before registering blueprints; the plugin runs after every other one."""
    plugin = DocsPlugin()
    plugin.init_spec(api.spec)
    api.spec.plugins.append(plugin)
