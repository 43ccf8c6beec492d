"""The one place a job ends.

Every terminal state (succeeded; failed for bad input, an error, too many
deliveries or a time limit; canceled while queued or running; refused at submit)
goes through :func:`end_job`: one atomic script in the job store moves the record,
appends the terminal event, clears the job's bookkeeping (its model's queued set,
its owner's active set) and counts it fleet-wide; then :func:`on_end` sends the
job's webhook, if it asked for one, due within ``webhook_lease_s`` (else the reaper
sends it again: a webhook is delivered at least once, always with the same id).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from tasks.jobs import bookkeeping as bk
from tasks.jobs.store import LIVE, JobStore, now
from tasks.messaging.names import DELIVER_WEBHOOK

log = logging.getLogger("kiln.jobs")


def end_job(
    store: JobStore,
    celery: Any,
    job_id: str,
    status: str,
    *,
    allowed_from: Iterable[str] = LIVE,
    error: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    webhook_lease_s: float = 60.0,
    **fields: Any,
) -> dict[str, Any] | None:
    """End a live job as ``status``; returns its record, or None when it was not in
    ``allowed_from`` (already ended, or gone) and nothing changed."""
    event = dict(data or {})
    if error is not None:
        event.setdefault("error", error)
        fields["error"] = error
    _prev, record = store.end(
        job_id, status, allowed_from=allowed_from, data=event, completed_at=now(), **fields
    )
    if record is not None:
        on_end(store, celery, record, webhook_lease_s=webhook_lease_s)
    return record


def on_end(store: JobStore, celery: Any, record: dict[str, Any], *, webhook_lease_s: float) -> None:
    """What follows an end: the job's webhook, on the ``webhooks`` queue. The end is
    already recorded; a broker that refuses the webhook leaves it due for the reaper."""
    if not record.get("webhook"):
        return
    try:
        bk.webhook_due(store.redis, record["id"], in_s=webhook_lease_s)
    except Exception as exc:
        log.error("webhook of job %s not marked due: %s", record["id"], type(exc).__name__)
    if celery is None:
        return
    try:
        celery.send_task(DELIVER_WEBHOOK, kwargs={"job_id": record["id"]})
    except Exception as exc:  # kombu raises many types for a broker that is down
        log.error("webhook of job %s not queued: %s", record["id"], type(exc).__name__)
