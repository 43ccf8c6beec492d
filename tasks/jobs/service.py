"""The job service: accept, read, follow and cancel jobs (what the API calls).

    from tasks.jobs.request import JobRequest
    from tasks.jobs.service import JobService
    jobs = JobService(settings)
    done = jobs.accept(JobRequest(fields={"prompt": "a red fox", "model": "tiny-sd"}, door="rest"))

``accept`` is every door's one way in. The record is written (with the quota's count
and the Idempotency-Key's claim, in one script) before the task is sent, so a job is
never lost between the two. A message the broker refuses takes the record back (a 503,
nothing left, the key free for the retry); where the job store cannot take it back,
the record stays queued, the lost-message sweep sends it, and the caller gets its job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from celery import Celery

from config.errors import (
    BrokerUnavailable,
    Conflict,
    JobStoreUnavailable,
    NotFound,
    RateLimited,
)
from config.settings import Settings
from pipelines.registry import LiveRegistry, Registry
from tasks.jobs import bookkeeping as bk
from tasks.jobs.ends import end_job
from tasks.jobs.fleet import Fleet
from tasks.jobs.inputs import FetchSlots, Inputs
from tasks.jobs.records import JobRecord, new_job_id
from tasks.jobs.request import Accepted, JobRequest
from tasks.jobs.schema import check_image_size, load_job, validate_job
from tasks.jobs.sending import send_generate_message
from tasks.jobs.storage import Storage
from tasks.jobs.store import TERMINAL, JobStore
from tasks.jobs.urlsafety import check_job_webhook
from tasks.messaging.app import make_celery
from tasks.messaging.names import queue_for

log = logging.getLogger("kiln.jobs")


def body_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def quota_reached(quota: int) -> RateLimited:
    return RateLimited(
        f"{quota} jobs of this API key are already queued or running",
        fields={"quota": [quota]},
    )


class JobService:
    """Validates, records and sends jobs; reads, follows and cancels them."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: Registry | None = None,
        celery: Celery | None = None,
        store: JobStore | None = None,
        storage: Storage | None = None,
    ) -> None:
        self.settings = settings
        # Re-read when models.yaml or a drop-in changes: `kiln models add` needs no restart.
        self.registry: Registry = registry or LiveRegistry(settings)
        longest = max((m.spec.time_limit_s for m in self.registry.values()), default=360)
        self.celery = celery or make_celery(settings, longest_time_limit_s=longest)
        self.store = store or JobStore.for_settings(settings)
        self.storage = storage or Storage(settings)
        self.fleet = Fleet(self.store.redis, self.celery)
        # Counts each job made (the API's metric): called by ``accept`` with model, door.
        self.on_accept: Callable[[str, str], None] | None = None
        self.fetch_slots = FetchSlots(settings.input_fetch_max, share=settings.key_slot_share)

    # -- submit ---------------------------------------------------------------
    def validate(self, payload: Any) -> dict[str, Any]:
        """Raw payload → job params; raises ``InvalidInput`` naming the fields."""
        params = load_job(payload, self.registry)
        self.check_webhook(params)
        return params

    def check_inputs(
        self,
        params: dict[str, Any],
        *,
        read_job: Callable[[str], dict[str, Any] | None] | None,
        holder: str = "",
    ) -> dict[str, Any]:
        """Read, decode and check the image inputs (``read_job(id)``: a job this caller
        may read, or None; ``holder``: whose share of the fetch slots a URL takes);
        sizes the job from the image. Raises ``InvalidInput``."""
        if params.get("image") is None and params.get("mask") is None:
            return params
        inputs = Inputs.for_settings(
            self.storage,
            self.settings,
            read_job=read_job,
            slots=self.fetch_slots,
            holder=holder,
        )
        checked = inputs.check(params, self.registry[params["model"]])
        return check_image_size(params, checked, self.registry)

    def check_webhook(self, params: dict[str, Any]) -> None:
        check_job_webhook(
            params.get("webhook_url"),
            secret=self.settings.webhook_secret,
            allow_private=self.settings.webhook_allow_private,
        )

    def accept(self, request: JobRequest) -> Accepted:
        """The one way a job comes in, whatever the door: the request's fields under the
        model's rules, its webhook and image inputs checked, then (``submit``) the
        Idempotency-Key, the quota, the record and the message. Raises ``InvalidInput``
        (naming the fields), ``Conflict``, ``RateLimited`` or a ``TransientError``."""
        params = validate_job(dict(request.fields), self.registry)
        self.check_webhook(params)
        if request.idempotency_key:  # a retry is answered before anything is read or counted
            replay = self._replay(request.owner, request.idempotency_key, request.body)
            if replay is not None:
                return Accepted(record=replay, created=False, params=params)
        params = self.check_inputs(params, read_job=request.read_job, holder=request.holder)
        record, created, params = self._submit(
            params,
            owner=request.owner,
            job_id=request.job_id,
            source=request.door,
            idempotency_key=request.idempotency_key,
            request_body=request.body,
            sent=request.sent,
        )
        if created and self.on_accept is not None:
            self.on_accept(params["model"], request.door)
        if request.sent or not created:
            return Accepted(record=record, created=created, params=params)
        return Accepted(record=self._shown(record), created=created, params=params)

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
        (``created`` False); the same key with another body is a ``Conflict``. The key
        is claimed with the record, in one step, and set free again if the message
        cannot be sent: a retry then makes the job afresh.
        """
        record, created, _ = self._submit(
            params,
            owner=owner,
            job_id=job_id,
            source=source,
            idempotency_key=idempotency_key,
            request_body=request_body,
        )
        return record, created

    def _submit(
        self,
        params: dict[str, Any],
        *,
        owner: str | None,
        job_id: str | None,
        source: str,
        idempotency_key: str | None,
        request_body: Any,
        sent: bool = False,
    ) -> tuple[dict[str, Any], bool, dict[str, Any]]:
        """``submit``, and the params as recorded (inputs as stored descriptors). With
        ``sent`` (the Celery door: the message is on the broker already) the job is only
        recorded, inputs with the digest of what the message named; a record already
        there (the same message delivered twice) is returned as it is."""
        job_id = job_id or new_job_id()
        if sent:
            params = Inputs(self.storage).store(job_id, params, refs=True)
            job = JobRecord.new(job_id, params, source=source)
            if self.store.create(job.to_dict()):
                return job.to_dict(), True, params
            return self.store.get(job_id) or job.to_dict(), False, params
        quota = self.settings.max_concurrent_jobs if owner else 0
        claim = None
        if idempotency_key:
            replay = self._replay(owner, idempotency_key, request_body)
            if replay is not None:
                return replay, False, params
            value = json.dumps({"job_id": job_id, "body": body_hash(request_body)})
            claim = (
                bk.idempotency_key(owner, idempotency_key),
                value,
                self.settings.idempotency_ttl_s,
            )
        if quota and self.store.live_jobs(owner) >= quota:  # spares storing inputs in vain
            raise quota_reached(quota)
        # Inputs first: a storage outage then costs no idempotency key (a retry works).
        params = Inputs(self.storage).store(job_id, params)
        job = JobRecord.new(job_id, params, owner=owner, source=source)
        record = job.to_dict()
        outcome, held = self.store.submit(record, quota=quota, idempotency=claim)
        if outcome == "idem":  # the same key, claimed a moment ago by a request like this one
            first = json.loads(held)
            replay = self._replay(owner, str(idempotency_key), request_body, first=first)
            if replay is None:
                raise Conflict(
                    "Idempotency-Key is being used by a request in progress",
                    fields={"Idempotency-Key": ["in use"]},
                )
            return replay, False, params
        if outcome == "quota":  # the check and the count are one step: this is the truth
            raise quota_reached(quota)
        if outcome == "exists":
            raise Conflict(f"job id {job_id!r} is taken", fields={"job_id": ["taken"]})
        try:
            send_generate_message(
                self.celery,
                job.to_task_kwargs(),
                task_id=job_id,
                ignore_result=True,  # the job store has the outcome: no result subscription
            )
        except Exception as exc:  # kombu raises many types for a broker that is down
            log.error("could not enqueue job %s: %s", job_id, type(exc).__name__)
            try:
                taken_back = self.store.discard(
                    job_id,
                    model=params["model"],
                    owner=owner,
                    idempotency_key=claim[0] if claim else None,
                )
            except JobStoreUnavailable:
                # The record stays, queued, and the lost-message sweep sends it (once):
                # the caller gets its job, never a 503 for a job that later runs.
                log.warning("job %s kept queued: the sweep will send its message", job_id)
                return record, True, params
            if taken_back:
                raise BrokerUnavailable("the job could not be queued; try again") from exc
            return record, True, params  # a worker received it: the message went out after all
        queue = queue_for(params["model"])
        log.info(
            "job %s queued on %s",
            job_id,
            queue,
            extra={"job_id": job_id, "model": params["model"], "queue": queue},
        )
        return record, True, params

    def _replay(
        self, owner: str | None, key: str, body: Any, *, first: Any = None
    ) -> dict[str, Any] | None:
        """The job an Idempotency-Key made, for the same body (None: the key is free)."""
        rkey = bk.idempotency_key(owner, key)
        first = first if first is not None else self.store.idempotent(rkey)
        if not first:
            return None
        if first.get("body") != body_hash(body):
            raise Conflict(
                "Idempotency-Key was used with a different request body",
                fields={"Idempotency-Key": ["reused with another body"]},
            )
        record = self.get(first["job_id"])
        if record is None:  # its job's record expired: the key is free again
            self.store.release(rkey, first["job_id"])
        return record

    def _shown(self, record: dict[str, Any]) -> dict[str, Any]:
        """A new job as its door shows it: with its queue place, unless the job store
        cannot say (the job is made all the same)."""
        try:
            return self.view(dict(record))
        except (JobStoreUnavailable, redis.RedisError):
            return {**record, "queue_position": None, "eta_s": None}

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
            pos, rate, workers = self.fleet.waiting(model, record["id"])
            if pos is None:  # its batch began between the two reads: show it as it is now
                fresh = self.store.get(record["id"])
                if fresh is not None and fresh.get("status") != "queued":
                    return self.view(fresh)
            if pos is not None:
                load_s = 0.0
                if not workers:  # no ready worker holds the model: one loads it first
                    workers, measured = self.fleet.standby(model)
                    load_s = measured or 0.0
                record["queue_position"] = pos
                record["eta_s"] = load_s + bk.eta_s(
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
                rate = self.fleet.s_per_image(model)
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
                    self.store.ask_cancel(job_id)
                self.celery.control.revoke(job_id)
            except Exception as exc:
                log.warning("revoke of %s not sent: %s", job_id, type(exc).__name__)
            return {"id": job_id, "status": "canceled", "was": "queued"}
        prev = (self.store.get(job_id) or {}).get("status")
        if prev == "running":
            self.store.transition(
                job_id, allowed_from=("running",), event="cancel_requested", cancel_requested=True
            )
            self.store.ask_cancel(job_id)
            return {"id": job_id, "status": "canceling", "was": "running"}
        raise Conflict(f"job already {prev}", fields={"status": [prev]})
