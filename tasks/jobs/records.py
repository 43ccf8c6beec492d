"""The job record: built once at submit, then only moved forward by the worker."""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import urlsplit

from tasks.jobs.store import now

PARAM_KEYS = (
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "steps",
    "guidance_scale",
    "scheduler",
    "n",
    "seed",
    "loras",
    "output_format",
    "output_compression",
    "mode",
    "strength",
    "image",
    "mask",
)


# What callers see of a record (``GET /v1/jobs/<id>``); the API adds queue position
# and ETA to a waiting job. A webhook carries the job's outcome, not its live state.
PUBLIC_FIELDS = (
    "id",
    "status",
    "model",
    "params",
    "seeds",
    "created_at",
    "started_at",
    "completed_at",
    "progress",
    "images",
    "error",
    "attempts",
    "webhook",
    "batch_id",
    "batch_size",
    "batches",
    "queue_position",
    "eta_s",
    "run_s",
    "upload_s",
)
LIVE_FIELDS = frozenset({"progress", "webhook", "batches", "queue_position", "eta_s"})
WEBHOOK_FIELDS = tuple(f for f in PUBLIC_FIELDS if f not in LIVE_FIELDS | {"run_s", "upload_s"})


def public_view(record: dict[str, Any], fields: tuple[str, ...] = PUBLIC_FIELDS) -> dict[str, Any]:
    return {k: record.get(k) for k in fields}


def new_job_id() -> str:
    return uuid.uuid4().hex


# Job ids name Redis keys and storage prefixes (``generated/<job_id>/``): a fixed, safe
# alphabet for every door (uuid hex, Celery's dashed uuids, or a sender's own ids).
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
JOB_ID_RULE = "1 to 64 characters: letters, digits, '_' or '-'"


def valid_job_id(job_id: Any) -> bool:
    return isinstance(job_id, str) and JOB_ID.match(job_id) is not None


def differences(record: dict[str, Any], params: dict[str, Any], owner: str | None) -> list[str]:
    """What a message for an existing job asks that its record does not say (empty: the
    same job, e.g. delivered again)."""
    stored = record.get("params") or {}
    diff = [k for k in PARAM_KEYS if stored.get(k) != params.get(k)]
    if record.get("model") != params.get("model"):
        diff.append("model")
    if list(record.get("seeds") or []) != list(params.get("seeds") or []):
        diff.append("seeds")
    if (record.get("webhook") or {}).get("url") != params.get("webhook_url"):
        diff.append("webhook_url")
    if record.get("owner") != owner:
        diff.append("owner")
    return diff


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


def task_kwargs(job_id: str, params: dict[str, Any], owner: str | None = None) -> dict[str, Any]:
    """The ``kiln.generate`` kwargs for validated params (the public task contract).

    ``owner`` (the API key's name) lets the worker tell this job's own message from
    another one that reuses its id."""
    out = {k: params.get(k) for k in (*PARAM_KEYS, "model", "webhook_url")}
    out["seeds"] = list(params["seeds"])
    out["job_id"] = job_id
    if owner:
        out["owner"] = owner
    return out


def task_kwargs_from_record(record: dict[str, Any]) -> dict[str, Any]:
    """The ``kiln.generate`` kwargs that re-send a recorded job (same id, same seeds)."""
    hook = record.get("webhook") or {}
    params = {
        **(record.get("params") or {}),
        "model": record["model"],
        "seeds": record.get("seeds") or [],
        "webhook_url": hook.get("url"),
    }
    return task_kwargs(record["id"], params, record.get("owner"))


def redact_webhook_url(url: str) -> str:
    """``https://user:pw@hooks.example.com/T0/token?sig=x`` → ``https://hooks.example.com/***``.

    Webhook URLs often carry a token in their path, query or credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}/***"


def kwargs_repr(kwargs: dict[str, Any]) -> str:
    """What Flower and task events show for ``kiln.generate`` kwargs (no webhook token)."""
    shown = dict(kwargs)
    if shown.get("webhook_url"):
        shown["webhook_url"] = redact_webhook_url(str(shown["webhook_url"]))
    return repr(shown)[:1024]


def task_result(record: dict[str, Any]) -> dict[str, Any]:
    """The record a ``kiln.generate`` task returns. Celery logs it and Flower shows it,
    so its webhook URL is redacted (the job store keeps the real one) and its images
    carry their storage keys, never a URL: a presigned URL is a credential for as long
    as it lives. The API signs URLs when it answers (``JobService.view``)."""
    out = dict(record)
    hook = record.get("webhook")
    if isinstance(hook, dict) and hook.get("url"):
        out["webhook"] = {**hook, "url": redact_webhook_url(str(hook["url"]))}
    if isinstance(record.get("images"), list):
        out["images"] = [
            {k: v for k, v in image.items() if k != "url"} if isinstance(image, dict) else image
            for image in record["images"]
        ]
    return out
