"""The one place a job ends.

Every terminal state (succeeded; failed for bad input, an error, too many
deliveries or a time limit; canceled while queued or running; refused at submit)
goes through :func:`end_job`: one atomic script in the job store moves the record,
appends the terminal event, clears the job's bookkeeping (its model's queued set,
its owner's active set) and counts it fleet-wide; then :func:`on_end` sends the
job's webhook, if it asked for one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from tasks.jobs.store import JobStore, now
from tasks.messaging.names import DELIVER_WEBHOOK

log = logging.getLogger("kiln.jobs")
LIVE = ("queued", "running")


def end_job(
    store: JobStore,
    celery: Any,
    job_id: str,
    status: str,
    *,
    allowed_from: Iterable[str] = LIVE,
    error: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any] | None:
    """End a live job as ``status``; returns its record, or None when it was not in
    ``allowed_from`` (already ended, or gone) and nothing changed."""
    event = dict(data or {})
    if error is not None:
        event.setdefault("error", error)
        fields["error"] = error
    _prev, applied = store.end(
        job_id, status, allowed_from=allowed_from, data=event, completed_at=now(), **fields
    )
    if not applied:
        return None
    record = store.get(job_id) or {"id": job_id, "status": status}
    on_end(celery, record)
    return record


def on_end(celery: Any, record: dict[str, Any]) -> None:
    """What follows an end: the job's webhook, on the ``webhooks`` queue."""
    if record.get("webhook") and celery is not None:
        celery.send_task(DELIVER_WEBHOOK, kwargs={"job_id": record["id"]})
