"""The one object every blueprint uses to reach the workers: the job service
(``tasks.jobs``), built once per app."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, current_app, request

from app.auth import can_see, owner
from app.limits import limit_key
from config.errors import InvalidInput, NotFound
from config.settings import Settings
from tasks.jobs.request import JobRequest
from tasks.jobs.service import JobService

log = logging.getLogger("kiln.api")


MAX_IDEMPOTENCY_KEY = 255


def init_service(app: Flask, settings: Settings) -> None:
    jobs = JobService(settings)
    app.extensions["kiln"] = jobs
    if settings.s3_create_bucket:
        try:  # best effort: workers create it too; /readyz reports storage either way
            jobs.storage.ensure_bucket()
        except Exception as exc:
            log.warning(
                "bucket %s not checked at start: %s", settings.s3_bucket, type(exc).__name__
            )


def service() -> JobService:
    return current_app.extensions["kiln"]


def settings() -> Settings:
    return current_app.config["KILN_SETTINGS"]


def readable_job(job_id: str) -> dict[str, Any] | None:
    """The job, if it exists and this API key may see it."""
    record = service().get(job_id)
    return record if record is not None and can_see(record.get("owner")) else None


def get_job_or_404(job_id: str) -> dict[str, Any]:
    """The job, if it exists and this API key may see it (404 either way, no hints)."""
    record = readable_job(job_id)
    if record is None:
        raise NotFound(f"no job {job_id!r}", fields={"job_id": [job_id]})
    return record


def job_request(fields: Mapping[str, Any], door: str, **more: Any) -> JobRequest:
    """The request a door hands ``accept``: its fields, with this caller's key, what it
    may read and whose share of the caps it takes."""
    return JobRequest(
        fields=fields,
        door=door,
        owner=owner(),
        read_job=readable_job,
        holder=limit_key(),
        **more,
    )


def idempotency_key() -> str | None:
    """The request's ``Idempotency-Key`` header (None without one), checked: 1 to 255
    visible ASCII characters."""
    value = request.headers.get("Idempotency-Key")
    if not value:
        return None
    if len(value) > MAX_IDEMPOTENCY_KEY or not (value.isascii() and value.isprintable()):
        reason = f"must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        raise InvalidInput(
            f"invalid Idempotency-Key: {reason}", fields={"Idempotency-Key": [reason]}
        )
    return value
