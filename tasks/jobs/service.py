"""The job service: submit, read, follow and cancel jobs (what the API calls).

    from tasks.jobs.service import JobService
    jobs = JobService(settings)
    record, created = jobs.submit(jobs.validate({"prompt": "a red fox", "model": "tiny-sd"}))

The job record is written before the task is sent, so a job is never lost
between the two: if the broker refuses the message, the record says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from celery import Celery

from config.errors import (
    BrokerUnavailable,
    Conflict,
    NotFound,
    RateLimited,
)
from config.settings import Settings
from pipelines.registry import LiveRegistry, Registry
from tasks.jobs import bookkeeping as bk
from tasks.jobs.ends import end_job
from tasks.jobs.fleet import Fleet
from tasks.jobs.inputs import Inputs
from tasks.jobs.records import kwargs_repr, new_job_id, new_record, task_kwargs
from tasks.jobs.schema import check_image_size, load_job
from tasks.jobs.storage import Storage
from tasks.jobs.store import TERMINAL, JobStore
from tasks.jobs.urlsafety import check_job_webhook
from tasks.messaging.app import make_celery
from tasks.messaging.names import GENERATE, queue_for

log = logging.getLogger("kiln.jobs")


def body_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class JobService:
    """Validates, records and sends jobs; reads, follows and cancels them."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: Registry | None = None,
        celery: Celery | None = None,
    ) -> None:
        self.settings = settings
        # Re-read when models.yaml or a drop-in changes: `kiln models add` needs no restart.
        self.registry: Registry = registry or LiveRegistry(settings)
        longest = max((m.spec.time_limit_s for m in self.registry.values()), default=360)
        self.celery = celery or make_celery(settings, longest_time_limit_s=longest)
        self.store = JobStore(settings.redis_url, ttl_s=settings.job_ttl_s)
        self.storage = Storage(settings)
        self.fleet = Fleet(self.store.redis, self.celery)

    # -- submit ---------------------------------------------------------------
    def validate(self, payload: Any) -> dict[str, Any]:
        """Raw payload → job params; raises ``InvalidInput`` naming the fields."""
        params = load_job(payload, self.registry)
        self.check_webhook(params)
        return params

    def check_inputs(
        self, params: dict[str, Any], *, read_job: Callable[[str], dict[str, Any] | None]
    ) -> dict[str, Any]:
        """Read, decode and check the image inputs (``read_job(id)``: a job this caller
        may read, or None); sizes the job from the image. Raises ``InvalidInput``."""
        if params.get("image") is None and params.get("mask") is None:
            return params
        inputs = Inputs.for_settings(self.storage, self.settings, read_job=read_job)
        checked = inputs.check(params, self.registry[params["model"]])
        return check_image_size(params, checked, self.registry)

    def check_webhook(self, params: dict[str, Any]) -> None:
        check_job_webhook(
            params.get("webhook_url"),
            secret=self.settings.webhook_secret,
            allow_private=self.settings.webhook_allow_private,
        )

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
        if owner and quota and bk.active_jobs(self.store.redis, owner) >= quota:
            raise RateLimited(
                f"{quota} jobs of this API key are already queued or running",
                fields={"quota": [quota]},
            )
        # Inputs first: a storage outage then costs no idempotency key (a retry works).
        params = Inputs(self.storage).store(job_id, params)
        if idempotency_key:
            existing = self._claim_key(idempotency_key, owner, job_id, request_body)
            if existing is not None:
                return existing, False
        record = new_record(job_id, params, owner=owner, source=source)

        def bookkeeping(pipe: Any) -> None:
            bk.mark_queued(pipe, params["model"], job_id, record["created_at"])
            bk.mark_active(pipe, owner, job_id, ttl_s=self.settings.job_ttl_s)
            bk.mark_owned(pipe, owner, job_id, record["created_at"], ttl_s=self.settings.job_ttl_s)

        self.store.create(record, also=bookkeeping)
        try:
            kwargs = task_kwargs(job_id, params, owner)
            self.celery.send_task(
                GENERATE,
                kwargs=kwargs,
                kwargsrepr=kwargs_repr(kwargs),
                task_id=job_id,
                ignore_result=True,  # the job store has the outcome: no result subscription
            )
        except Exception as exc:  # kombu raises many types for a broker that is down
            log.error("could not enqueue job %s: %s", job_id, type(exc).__name__)
            end_job(
                self.store,
                None,  # the broker just refused a message: the reaper sends the webhook
                job_id,
                "failed",
                allowed_from=("queued",),
                error={"code": "broker_unavailable", "message": "the job could not be queued"},
                webhook_lease_s=self.settings.webhook_lease_s,
            )
            raise BrokerUnavailable("the job could not be queued; try again") from exc
        queue = queue_for(params["model"])
        log.info(
            "job %s queued on %s",
            job_id,
            queue,
            extra={"job_id": job_id, "model": params["model"], "queue": queue},
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
        """``record`` with fresh image URLs, and its queue position and ETA while it waits
        (one more round trip) or its ETA from its own step timings while it runs."""
        for image in record.get("images") or []:
            image["url"] = self.storage.url(image["key"])
        record["queue_position"] = record["eta_s"] = None
        model = record.get("model")
        images = len(record.get("seeds") or [1])
        if record.get("status") == "queued" and isinstance(model, str):
            pos, rate, workers = bk.waiting(self.store.redis, model, record["id"])
            if pos is None:  # its batch began between the two reads: show it as it is now
                fresh = self.store.get(record["id"])
                if fresh is not None and fresh.get("status") != "queued":
                    return self.view(fresh)
            if pos is not None:
                record["queue_position"] = pos
                record["eta_s"] = bk.eta_s(
                    position=pos,
                    images=images,
                    workers=workers,
                    s_per_image=rate or self.settings.default_s_per_image,
                )
        elif record.get("status") == "running" and isinstance(model, str):
            progress = record.get("progress") or {}
            step, steps = int(progress.get("step") or 0), int(progress.get("steps") or 0)
            fallback = 0.0
            if step <= 0:  # no step timing yet: the model's own rate
                rate = bk.s_per_image(self.store.redis, model)
                fallback = images * (rate or self.settings.default_s_per_image)
            record["eta_s"] = bk.running_eta_s(
                step=step,
                steps=steps,
                elapsed_s=time.time() - float(record.get("started_at") or time.time()),
                fallback_s=fallback,
            )
        return record

    def follow(
        self, job_id: str, *, after: str = "0-0", timeout: float, poll_s: float = 10.0
    ) -> Iterator[tuple[str, str, Any] | None]:
        """The job's events after ``after``, as they come, until its terminal event or
        ``timeout``; ``None`` after each ``poll_s`` without one (a keep-alive)."""
        deadline = time.monotonic() + timeout
        cursor = after
        while (left := deadline - time.monotonic()) > 0:
            batch = self.store.events(
                job_id, cursor, block_ms=max(1, int(min(left, poll_s) * 1000))
            )
            if not batch:
                yield None
                if (self.store.get(job_id) or {}).get("status") in TERMINAL:
                    return
                continue
            for event_id, event, data in batch:
                cursor = event_id
                yield event_id, event, data
                if event in TERMINAL:
                    return

    def wait(self, job_id: str, *, timeout: float) -> dict[str, Any] | None:
        """Block on the job's event stream until it ends or ``timeout`` passes."""
        record = self.store.get(job_id)
        if record is not None and record.get("status") not in TERMINAL:
            for _ in self.follow(job_id, timeout=timeout, poll_s=5.0):
                pass
        return self.get(job_id)

    # -- cancel ---------------------------------------------------------------
    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job: a queued one never runs; a running one stops at its next step."""
        record = self.store.get(job_id)
        if record is None:
            raise NotFound(f"no job {job_id!r}", fields={"job_id": [job_id]})
        if record.get("status") in TERMINAL:
            raise Conflict(f"job already {record['status']}", fields={"status": [record["status"]]})
        ended = end_job(
            self.store,
            self.celery,
            job_id,
            "canceled",
            allowed_from=("queued",),
            error={"code": "canceled", "message": "canceled while queued"},
            webhook_lease_s=self.settings.webhook_lease_s,
        )
        if ended is not None:
            try:  # best effort: the worker also skips jobs whose record says canceled
                if record.get("worker"):  # a worker holds it, waiting: it drops it now
                    self.store.redis.publish(bk.CANCEL_CHANNEL, job_id)
                self.celery.control.revoke(job_id)
            except Exception as exc:
                log.warning("revoke of %s not sent: %s", job_id, type(exc).__name__)
            return {"id": job_id, "status": "canceled", "was": "queued"}
        prev = (self.store.get(job_id) or {}).get("status")
        if prev == "running":
            self.store.transition(
                job_id, allowed_from=("running",), event="cancel_requested", cancel_requested=True
            )
            self.store.redis.publish(bk.CANCEL_CHANNEL, job_id)
            return {"id": job_id, "status": "canceling", "was": "running"}
        raise Conflict(f"job already {prev}", fields={"status": [prev]})
