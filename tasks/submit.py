"""Sending jobs: what the API (and any Python service that installs Kiln) uses.

    from tasks.submit import Dispatcher
    job = Dispatcher(settings).submit({"prompt": "a red fox", "model": "tiny-sd"})

The job record is written before the task is sent, so a job is never lost
between the two: if the broker refuses the message, the record says so.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from config.errors import BrokerUnavailable
from config.settings import Settings
from pipelines.registry import Registry
from tasks.celery_app import GENERATE, make_celery, queue_for
from tasks.jobs import JobStore, now
from tasks.records import new_job_id, new_record, task_kwargs
from tasks.schema import load_job
from tasks.storage import Storage

log = logging.getLogger("kiln.submit")


class Dispatcher:
    """Validates, records and sends jobs; reads them back with fresh image URLs."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: Registry | None = None,
        celery: Celery | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry or Registry.from_file(settings.models_file)
        longest = max((m.spec.time_limit_s for m in self.registry.values()), default=360)
        self.celery = celery or make_celery(settings, longest_time_limit_s=longest)
        self.store = JobStore(settings.redis_url, ttl_s=settings.job_ttl_s)
        self.storage = Storage(settings)

    def validate(self, payload: Any) -> dict[str, Any]:
        return load_job(payload, self.registry)

    def submit(
        self,
        params: dict[str, Any],
        *,
        owner: str | None = None,
        job_id: str | None = None,
        source: str = "api",
    ) -> dict[str, Any]:
        """Record and send already validated params; returns the new record."""
        job_id = job_id or new_job_id()
        record = new_record(job_id, params, owner=owner, source=source)
        self.store.create(record)
        try:
            self.celery.send_task(
                GENERATE,
                kwargs=task_kwargs(job_id, params),
                queue=queue_for(params["model"]),
                task_id=job_id,
            )
        except Exception as exc:  # kombu raises many types for a broker that is down
            log.error("could not enqueue job %s: %s", job_id, type(exc).__name__)
            self.store.transition(
                job_id,
                status="failed",
                event="failed",
                completed_at=now(),
                error={"code": "broker_unavailable", "message": "the job could not be queued"},
            )
            raise BrokerUnavailable("the job could not be queued; try again") from exc
        return record

    def get(self, job_id: str) -> dict[str, Any] | None:
        record = self.store.get(job_id)
        if record:
            for image in record.get("images") or []:
                image["url"] = self.storage.url(image["key"])
        return record
