"""The job record: built once at submit, then only moved forward by the worker."""

from __future__ import annotations

import uuid
from typing import Any

from tasks.jobs import now

PARAM_KEYS = (
    "prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "scheduler",
    "n", "seed", "loras",
)


def new_job_id() -> str:
    return uuid.uuid4().hex


def new_record(
    job_id: str, params: dict[str, Any], *, owner: str | None = None, source: str = "api"
) -> dict[str, Any]:
    webhook = None
    if params.get("webhook_url"):
        webhook = {"url": params["webhook_url"], "state": "pending", "attempts": 0}
    return {
        "id": job_id,
        "status": "queued",
        "model": params["model"],
        "params": {k: params.get(k) for k in PARAM_KEYS},
        "seeds": list(params["seeds"]),
        "created_at": now(),
        "started_at": None,
        "completed_at": None,
        "progress": {"step": 0, "steps": params["steps"]},
        "images": [],
        "error": None,
        "attempts": 0,
        "webhook": webhook,
        "batch_id": None,
        "batch_size": None,
        "owner": owner,
        "source": source,
    }


def task_kwargs(job_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """The ``kiln.generate`` kwargs for validated params (the public task contract)."""
    out = {k: params.get(k) for k in (*PARAM_KEYS, "model", "webhook_url")}
    out["seeds"] = list(params["seeds"])
    out["job_id"] = job_id
    return out
