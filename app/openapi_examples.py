"""An example for every schema of the OpenAPI spec (what ``/docs`` shows as "Example Value").

Kept apart from the schemas so that each door's module stays about its door; a unit test
checks that every component of the spec has one, that its keys are the schema's, and
that the request examples pass the same validation as a real request.
"""

from __future__ import annotations

from typing import Any

from flask_smorest import Api

JOB_ID = "3f2c9a7e1b4d4c0e8a5f6b7c8d9e0a1b"
URL = (
    f"http://127.0.0.1:9390/kiln/generated/{JOB_ID}/0.png"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&X-Amz-Signature=..."
)
T0 = 1764028800.0
ERROR_DETAIL = {
    "code": "invalid_request",
    "message": "invalid width: must be a multiple of 8, got 63",
    "fields": {"width": ["must be a multiple of 8, got 63"]},
}
IMAGE = {
    "url": URL,
    "key": f"generated/{JOB_ID}/0.png",
    "seed": 7,
    "width": 64,
    "height": 64,
    "format": "png",
}
MODEL = {
    "id": "tiny-sd",
    "object": "model",
    "owned_by": "kiln",
    "family": "sd15",
    "stand_in": True,
    "description": "Tiny SD 1.5-architecture stand-in (random weights), best at 64x64.",
    "dtype": "fp32",
    "dtype_source": "workers",
    "dtype_configured": "fp16",
    "worker_dtypes": {"fp32": 1},
    "defaults": {
        "width": 64,
        "height": 64,
        "steps": 8,
        "guidance_scale": 7.5,
        "scheduler": "dpmpp_2m",
    },
    "limits": {
        "min_size": 32,
        "max_size": 512,
        "size_multiple": 8,
        "max_steps": 150,
        "max_n": 8,
        "max_prompt_chars": 2000,
        "guidance_scale": [0.0, 30.0],
        "max_pixels_per_batch": 8388608,
        "max_loras": 3,
    },
    "schedulers": ["dpmpp_2m", "euler", "euler_a", "ddim"],
    "negative_prompt": True,
    "guidance": True,
    "loras": ["style"],
    "max_batch": 8,
    "queue": "gen.tiny-sd",
}


def native(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    detail: dict[str, Any] = {"code": code, "message": message}
    if fields:
        detail["fields"] = fields
    return {"error": detail}


def openai(message: str, *, kind: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


LIMIT = 1048576
TOO_LARGE = f"the request body is larger than the limit of {LIMIT} bytes (KILN_MAX_BODY_BYTES)"
NOT_JSON = "the request body must be JSON with Content-Type: application/json, got text/plain"
STEPS = "invalid steps: must be between 1 and 150 for tiny-sd, got 500"  # as the code says
QUOTA = "4 jobs of this API key are already queued or running"
# What each error status really answers, per door (``app.openapi_docs`` puts them in place).
NATIVE_ERRORS: dict[str, dict[str, Any]] = {
    "401": native("unauthorized", "an API key is required: Authorization: Bearer <key>"),
    "403": native("forbidden", "this key lacks the 'generate' scope", {"scope": ["generate"]}),
    "404": native("not_found", f"no job '{JOB_ID}'", {"job_id": [JOB_ID]}),
    "409": native(
        "conflict",
        "Idempotency-Key was used with a different request body",
        {"Idempotency-Key": ["reused with another body"]},
    ),
    "413": native("payload_too_large", TOO_LARGE, {"body": [f"at most {LIMIT} bytes"]}),
    "415": native(
        "unsupported_media_type", NOT_JSON, {"Content-Type": ["must be application/json"]}
    ),
    "422": {"error": ERROR_DETAIL},
    "429": native("rate_limited", QUOTA, {"quota": [4]}),
    "503": native("broker_unavailable", "the job could not be queued; try again"),
}
# Where one status means something else on one operation: (endpoint, method, status).
NATIVE_ERRORS_BY_OPERATION: dict[tuple[str, str, str], dict[str, Any]] = {
    ("jobs.Job", "delete", "409"): native(
        "conflict", "job already succeeded", {"status": ["succeeded"]}
    ),
    ("jobs.events", "get", "503"): native(
        "too_many_streams", "every event-stream slot of this server is taken; retry or poll"
    ),
}
OPENAI_ERRORS: dict[str, dict[str, Any]] = {
    "400": openai(STEPS, kind="invalid_request_error", param="steps", code="invalid_request"),
    "401": openai(
        "an API key is required: Authorization: Bearer <key>",
        kind="invalid_request_error",
        param=None,
        code="unauthorized",
    ),
    "403": openai(
        "this key lacks the 'generate' scope",
        kind="invalid_request_error",
        param="scope",
        code="forbidden",
    ),
    "404": openai(
        "The model 'dall-e-3' does not exist; available: tiny-sd",
        kind="invalid_request_error",
        param="model",
        code="model_not_found",
    ),
    "413": openai(TOO_LARGE, kind="invalid_request_error", param="body", code="payload_too_large"),
    "415": openai(
        NOT_JSON, kind="invalid_request_error", param="Content-Type", code="unsupported_media_type"
    ),
    "429": openai(QUOTA, kind="invalid_request_error", param="quota", code="rate_limited"),
    "500": openai(
        "generation failed: out of memory even for one image",
        kind="server_error",
        param=None,
        code="out_of_memory",
    ),
    "503": openai(
        "every synchronous-request slot of this server is taken; retry or poll",
        kind="server_error",
        param=None,
        code="too_many_waits",
    ),
    "504": openai(
        f"job {JOB_ID} is still running; poll /v1/jobs/{JOB_ID}",
        kind="timeout",
        param=None,
        code=JOB_ID,
    ),
}

EXAMPLES: dict[str, dict[str, Any]] = {
    # native REST (/v1/jobs, /v1/models, /healthz, /readyz)
    "Job": {
        "prompt": "a red fox in the snow, golden hour",
        "negative_prompt": "blurry",
        "model": "tiny-sd",
        "width": 64,
        "height": 64,
        "steps": 8,
        "guidance_scale": 7.5,
        "scheduler": "euler",
        "seed": 7,
        "n": 2,
        "loras": [{"name": "style", "weight": 0.8}],
        "output_format": "png",
    },
    "Lora": {"name": "style", "weight": 0.8},
    "JobView": {
        "id": JOB_ID,
        "status": "succeeded",
        "model": "tiny-sd",
        "params": {
            "prompt": "a red fox in the snow, golden hour",
            "width": 64,
            "height": 64,
            "steps": 8,
            "guidance_scale": 7.5,
            "scheduler": "dpmpp_2m",
            "n": 2,
        },
        "seeds": [7, 8],
        "created_at": T0,
        "started_at": T0 + 0.02,
        "completed_at": T0 + 0.41,
        "progress": {"step": 8, "steps": 8},
        "images": [
            IMAGE,
            {
                **IMAGE,
                "url": URL.replace("/0.png", "/1.png"),
                "key": f"generated/{JOB_ID}/1.png",
                "seed": 8,
            },
        ],
        "error": None,
        "attempts": 1,
        "webhook": None,
        "batch_id": "b-5d1e",
        "batch_size": 2,
        "batches": [],
        "run_s": 0.31,
        "upload_s": 0.03,
        "queue_position": None,
        "eta_s": None,
        "urls": {"self": f"/v1/jobs/{JOB_ID}", "events": f"/v1/jobs/{JOB_ID}/events"},
    },
    "Progress": {"step": 3, "steps": 8},
    "Image": IMAGE,
    "Cancel": {"id": JOB_ID, "status": "canceled", "was": "queued"},
    "Model": MODEL,
    "ModelList": {"object": "list", "data": [MODEL]},
    "Health": {
        "status": "ok",
        "checks": {
            "job_store": True,
            "storage": True,
            "workers": {"tiny-sd": 1},
            "required": ["tiny-sd"],
        },
    },
    "ApiError": {"error": ERROR_DETAIL},
    "ApiErrorDetail": ERROR_DETAIL,
    # flask-smorest's own
    "PaginationMetadata": {
        "total": 30,
        "total_pages": 3,
        "first_page": 1,
        "last_page": 3,
        "page": 2,
        "previous_page": 1,
        "next_page": 3,
    },
    # OpenAI-compatible (/v1/images/generations)
    "ImagesRequest": {
        "prompt": "a red fox in the snow",
        "model": "tiny-sd",
        "n": 1,
        "size": "64x64",
        "response_format": "url",
        "user": "user-1234",
        "negative_prompt": "blurry",
        "steps": 8,
        "guidance_scale": 7.5,
        "seed": 7,
        "output_format": "webp",
        "output_compression": 80,
    },
    "ImagesResponse": {
        "created": int(T0),
        "data": [{"url": URL, "revised_prompt": "a red fox in the snow"}],
        "output_format": "png",
    },
    "ImageData": {"url": URL, "revised_prompt": "a red fox in the snow"},
    "OpenAIError": {
        "error": {
            "message": "size: must be between 32 and 512 for tiny-sd",
            "type": "invalid_request_error",
            "param": "size",
            "code": "invalid_request",
        }
    },
    "OpenAIErrorDetail": {
        "message": f"job {JOB_ID} is still running; poll /v1/jobs/{JOB_ID}",
        "type": "timeout",
        "param": None,
        "code": JOB_ID,
    },
    # classic tutorial API (/generate, /job/<id>, /health)
    "Generate": {
        "prompt": "a red fox in the snow",
        "negative_prompt": "blurry",
        "model": "tiny-sd",
        "width": 64,
        "height": 64,
        "steps": 20,
        "guidance_scale": 7.5,
        "seed": 7,
        "webhook_url": None,
        "output_format": "jpeg",
        "output_compression": 90,
    },
    "GenerateResponse": {"job_id": JOB_ID, "status": "queued", "estimated_time": 1.5},
    "ClassicJob": {
        "job_id": JOB_ID,
        "status": "completed",
        "image_url": URL,
        "error": None,
        "created_at": "2025-11-25T00:00:00+00:00",
        "completed_at": "2025-11-25T00:00:00.410000+00:00",
    },
    "ClassicHealth": {"status": "healthy", "queue_length": 0, "workers": 1},
}


def add_examples(api: Api) -> None:
    """Put each schema's example into the spec (call after registering the blueprints)."""
    for name, schema in api.spec.components.schemas.items():
        if name in EXAMPLES:
            schema["example"] = EXAMPLES[name]
