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
        "worker": "sdxl@gpu0.4242@gpu-host-1",
        "load_wait_s": None,
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

EXAMPLES["JobList"] = {
    "object": "list",
    "data": [EXAMPLES["JobView"]],
    "has_more": True,
    "next_after": JOB_ID,
}


def add_examples(api: Api) -> None:
    """Put each schema's example into the spec (call after registering the blueprints)."""
    for name, schema in api.spec.components.schemas.items():
        if name in EXAMPLES:
            schema["example"] = EXAMPLES[name]
