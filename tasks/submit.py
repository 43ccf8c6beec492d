"""Sending jobs: what the API (and any Python service that installs Kiln) uses.

    from tasks.submit import Dispatcher
    d = Dispatcher(settings)
    job = d.submit(d.validate({"prompt": "a red fox", "model": "tiny-sd"}))

The job record is written before the task is sent, so a job is never lost
between the two: if the broker refuses the message, the record says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from celery import Celery
from marshmallow import ValidationError

from config.errors import BrokerUnavailable, Conflict, InvalidInput, NotFound, RateLimited
from config.settings import Settings
from pipelines.registry import Registry
from tasks import queues
from tasks.celery_app import GENERATE, make_celery, queue_for
from tasks.jobs import TERMINAL, JobStore, now
from tasks.records import kwargs_repr, new_job_id, new_record, task_kwargs
from tasks.schema import load_job
from tasks.storage import Storage
from tasks.urlsafety import check_webhook_url

log = logging.getLogger("kiln.submit")


def body_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class Dispatcher:
    """Validates, records and sends jobs; reads and cancels them."""

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

    # -- submit ---------------------------------------------------------------
    def validate(self, payload: Any) -> dict[str, Any]:
        params = load_job(payload, self.registry)
        self.check_webhook(params)
        return params

    def check_webhook(self, params: dict[str, Any]) -> None:
        url = params.get("webhook_url")
        if not url:
            return
        if not self.settings.webhook_secret:
            raise ValidationError({"webhook_url": ["webhooks are off: KILN_WEBHOOK_SECRET unset"]})
        try:
            check_webhook_url(url, allow_private=self.settings.webhook_allow_private, strict=False)
        except InvalidInput as exc:
            raise ValidationError(exc.fields) from None

    def submit(
        self,
        params: dict[str, Any],
        *,
        owner: str | None = None,
        job_id: str | None = None,
        source: str = "api",
        idempotency_key: str | None = None,
        request_body: Any = None,
    ) -> tuple[dict[str, Any], bool]:
        """Record and send validated params; returns ``(record, created)``.

        With an ``idempotency_key`` the same key and body return the first job
        (``created`` False); the same key with another body is a ``Conflict``.
        """
        job_id = job_id or new_job_id()
        quota = self.settings.max_concurrent_jobs
        if owner and quota and queues.active_jobs(self.store.redis, owner) >= quota:
            raise RateLimited(
                f"{quota} jobs of this API key are already queued or running",
                fields={"quota": [quota]},
            )
        if idempotency_key:
            existing = self._claim_key(idempotency_key, owner, job_id, request_body)
            if existing is not None:
                return existing, False
        record = new_record(job_id, params, owner=owner, source=source)

        def bookkeeping(pipe: Any) -> None:
            queues.mark_queued(pipe, params["model"], job_id, record["created_at"])
            queues.mark_active(pipe, owner, job_id)

        self.store.create(record, also=bookkeeping)
        try:
            kwargs = task_kwargs(job_id, params)
            self.celery.send_task(
                GENERATE,
                kwargs=kwargs,
                kwargsrepr=kwargs_repr(kwargs),
                queue=queue_for(params["model"]),
                task_id=job_id,
                ignore_result=True,  # the job store has the outcome: no result subscription
            )
        except Exception as exc:  # kombu raises many types for a broker that is down
            log.error("could not enqueue job %s: %s", job_id, type(exc).__name__)
            queues.mark_dequeued(self.store.redis, params["model"], job_id)
            self.store.transition(
                job_id,
                status="failed",
                event="failed",
                completed_at=now(),
                error={"code": "broker_unavailable", "message": "the job could not be queued"},
            )
            raise BrokerUnavailable("the job could not be queued; try again") from exc
        log.info(
            "job %s queued on %s",
            job_id,
            queue_for(params["model"]),
            extra={"job_id": job_id, "model": params["model"], "queue": queue_for(params["model"])},
        )
        return record, True

    def _claim_key(
        self, key: str, owner: str | None, job_id: str, body: Any
    ) -> dict[str, Any] | None:
        rkey = f"kiln:idem:{owner or '-'}:{hashlib.sha256(key.encode()).hexdigest()}"
        value = json.dumps({"job_id": job_id, "body": body_hash(body)})
        if self.store.redis.set(rkey, value, nx=True, ex=self.settings.idempotency_ttl_s):
            return None
        raw = self.store.redis.get(rkey)
        first = json.loads(raw) if raw else {}
        if first.get("body") != body_hash(body):
            raise Conflict(
                "Idempotency-Key was used with a different request body",
                fields={"Idempotency-Key": ["reused with another body"]},
            )
        record = self.get(first["job_id"])
        if record is None:
            raise Conflict(
                "Idempotency-Key is being used by a request in progress",
                fields={"Idempotency-Key": ["in use"]},
            )
        return record

    # -- read -----------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any] | None:
        """The record with fresh image URLs, and queue position and ETA while queued."""
        record = self.store.get(job_id)
        return None if record is None else self.view(record)

    def view(self, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` with fresh image URLs, queue position and ETA (one more round trip
        while it is queued)."""
        for image in record.get("images") or []:
            image["url"] = self.storage.url(image["key"])
        record["queue_position"] = record["eta_s"] = None
        model = record.get("model")
        if record.get("status") == "queued" and isinstance(model, str):
            pos, rate, workers = queues.waiting(self.store.redis, model, record["id"])
            if pos is not None:
                record["queue_position"] = pos
                record["eta_s"] = queues.eta_s(
                    position=pos,
                    images=len(record.get("seeds") or [1]),
                    workers=workers,
                    s_per_image=rate or self.settings.default_s_per_image,
                )
        return record

    def wait(self, job_id: str, *, timeout: float) -> dict[str, Any] | None:
        """Block on the job's event stream until it ends or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        cursor = "0-0"
        while True:
            record = self.store.get(job_id)
            if record is None or record.get("status") in TERMINAL:
                return self.get(job_id)
            left = deadline - time.monotonic()
            if left <= 0:
                return self.get(job_id)
            for event_id, event, _data in self.store.events(
                job_id, cursor, block_ms=max(1, int(min(left, 5.0) * 1000))
            ):
                cursor = event_id
                if event in TERMINAL:
                    return self.get(job_id)

    # -- cancel ---------------------------------------------------------------
    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job: a queued one never runs; a running one stops at its next step."""
        record = self.store.get(job_id)
        if record is None:
            raise NotFound(f"no job {job_id!r}", fields={"job_id": [job_id]})
        if record.get("status") in TERMINAL:
            raise Conflict(f"job already {record['status']}", fields={"status": [record["status"]]})
        prev, applied = self.store.transition(
            job_id,
            status="canceled",
            allowed_from=("queued",),
            event="canceled",
            data={"error": {"code": "canceled", "message": "canceled while queued"}},
            completed_at=now(),
            error={"code": "canceled", "message": "canceled while queued"},
        )
        if applied:
            queues.mark_dequeued(self.store.redis, record["model"], job_id)
            queues.mark_inactive(self.store.redis, record.get("owner"), job_id)
            try:  # best effort: the worker also skips jobs whose record says canceled
                self.celery.control.revoke(job_id)
            except Exception as exc:
                log.warning("revoke of %s not sent: %s", job_id, type(exc).__name__)
            return {"id": job_id, "status": "canceled", "was": "queued"}
        if prev == "running":
            self.store.transition(
                job_id, allowed_from=("running",), event="cancel_requested", cancel_requested=True
            )
            self.store.redis.publish(queues.CANCEL_CHANNEL, job_id)
            return {"id": job_id, "status": "canceling", "was": "running"}
        raise Conflict(f"job already {prev}", fields={"status": [prev]})
