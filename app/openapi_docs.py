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

from app.openapi_examples import (
    EXAMPLES,
    NATIVE_ERRORS,
    NATIVE_ERRORS_BY_OPERATION,
    OPENAI_ERRORS,
)
from app.schemas import ApiErrorSchema

OPERATION_IDS = {
    ("jobs.Jobs", "post"): "createJob",
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
