"""The reaper: jobs whose worker died are sent again within seconds, on any broker,
and so are webhooks whose message was lost (``tasks.jobs.bookkeeping.webhook_due``).

Every worker process runs one; a short Redis lock lets one of them at a time walk
each model's held set (``tasks.jobs.bookkeeping``: the jobs a worker took, whether
still waiting in it for their batch or running). A job held by a worker whose
heartbeat has expired (``HEARTBEAT_TTL_S`` after its last beat) goes back to its
model's queue, atomically (only while that worker still holds it), and a fresh
``kiln.generate`` message is sent for it; the delivery is counted when a worker
claims it. The broker's own late restore of the old message (after its visibility
timeout, on Redis) then finds the job held by a live worker or ended, and is dropped.

Recovery bound: heartbeat TTL (6 s) + reaper period (2 s) + one claim: ≤ 10 s after
a SIGKILL, whatever the visibility timeout.

After any job-store outage every heartbeat looks expired, though the workers live:
a reaper first waits one heartbeat TTL of good contact before it reaps again.

A job can also wait ``queued`` with its message lost (a Redis broker that stopped
between a worker's ``BRPOP`` and kombu's note of the delivery), or left in the
broker's unacked hash by a worker that dropped it on reconnecting
(``tasks.messaging.lost``). Every ``KILN_LOST_MESSAGE_SWEEP_S`` (30 s), and at the
first reap after an outage, the reaper looks for the queued jobs no worker holds whose
message is nowhere; one still missing at the next look is sent again (a ``resent``
event). A copy too many is harmless: a job runs once, on the worker that claims it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from config.settings import is_redis_url
from tasks.jobs import bookkeeping as bk
from tasks.jobs.records import task_kwargs_from_record
from tasks.jobs.sending import send_generate_message
from tasks.messaging.lost import unheard
from tasks.messaging.names import DELIVER_WEBHOOK, queue_for
from tasks.worker.runtime import HEARTBEAT_TTL_S, Runtime

log = logging.getLogger("kiln.reaper")
REAP_S = 2.0
QUEUED_FOR_S = 5.0  # younger jobs may be between their record and their message
STALE_UNACKED_S = 30.0  # a delivered message whose job no worker took after this long


class Reaper:
    def __init__(self, runtime: Runtime, *, period_s: float = REAP_S) -> None:
        self.runtime = runtime
        self.period_s = period_s
        self._since_outage = time.monotonic()  # contact is fresh from start-up on
        # On RabbitMQ a dead consumer's messages come back at once; re-sending its jobs
        # would only add copies that wait for the first to end.
        self.resend_jobs = is_redis_url(runtime.settings.broker_url)
        self._next_sweep = 0.0  # sweep at the first reap, and after every outage
        self._unheard: set[str] = set()  # missing at the last sweep

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="kiln-reaper", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        stop = self.runtime._stop
        while not stop.wait(self.period_s):
            try:
                self.reap_once()
            except Exception as exc:  # the job store is down: try again later
                self._since_outage = time.monotonic()
                self._next_sweep = 0.0
                log.warning("reaper: %s", type(exc).__name__)

    def reap_once(self) -> list[str]:
        """Send again every job held by a dead worker; returns their ids."""
        rt, r = self.runtime, self.runtime.store.redis
        if time.monotonic() - self._since_outage < HEARTBEAT_TTL_S + self.period_s:
            return []
        if not bk.take_reaper_lock(r, rt.hostname, int(self.period_s * 1000)):
            return []
        sent: list[str] = []
        for model in rt.registry if self.resend_jobs else ():
            for job_id, worker in bk.held_jobs(r, model).items():
                if bk.worker_alive(r, model, worker):
                    continue
                if self.resend(model, job_id, worker):
                    sent.append(job_id)
        if self.resend_jobs and time.monotonic() >= self._next_sweep:
            sent += self.sweep()
        for job_id in bk.overdue_webhooks(r):
            bk.webhook_due(r, job_id, in_s=rt.settings.webhook_lease_s)
            rt.celery.send_task(DELIVER_WEBHOOK, kwargs={"job_id": job_id})
            log.warning("webhook of job %s overdue; sent again", job_id, extra={"job_id": job_id})
        return sent

    def sweep(self) -> list[str]:
        """Send again each queued job, held by no worker, whose message was missing at
        this look and the last one; returns their ids."""
        rt, r = self.runtime, self.runtime.store.redis
        missing: set[str] = set()
        for model in rt.registry:
            held = bk.held_jobs(r, model)
            waiting = bk.queued_before(r, model, time.time() - QUEUED_FOR_S)
            candidates = [job_id for job_id in waiting if job_id not in held]
            missing |= unheard(rt.celery, queue_for(model), candidates, stale_s=STALE_UNACKED_S)
        bk.count_sweep(r, missing=len(missing))
        again, self._unheard = missing & self._unheard, missing - self._unheard
        # Look again soon while something is missing; otherwise every lost_message_sweep_s.
        every = self.period_s if self._unheard else rt.settings.lost_message_sweep_s
        self._next_sweep = time.monotonic() + every
        return [job_id for job_id in sorted(again) if self.send_lost(job_id)]

    def send_lost(self, job_id: str) -> bool:
        store = self.runtime.store
        record = store.get(job_id)
        if record is None or record.get("status") != "queued" or not record.get("model"):
            return False
        if not bk.take_resend(store.redis, job_id, ttl_s=int(STALE_UNACKED_S)):
            return False  # another reaper sent it a moment ago
        _, noted = store.transition(
            job_id, allowed_from=("queued",), event="resent", data={"reason": "message lost"}
        )
        if not noted:
            return False
        self.send_again(record)
        log.warning("job %s: its message was lost; sent again", job_id, extra={"job_id": job_id})
        return True

    def send_again(self, record: dict[str, Any]) -> None:
        """A fresh ``kiln.generate`` message for a recorded job (same id, same seeds)."""
        send_generate_message(
            self.runtime.celery, task_kwargs_from_record(record), task_id=record["id"]
        )

    def resend(self, model: str, job_id: str, dead_worker: str) -> bool:
        store = self.runtime.store
        record = store.get(job_id)
        if record is None or not store.requeue(
            job_id, model=model, dead_worker=dead_worker, score=record.get("created_at") or 0
        ):
            return False
        self.send_again(record)
        log.warning(
            "job %s: worker %s died; sent again to %s",
            job_id,
            dead_worker,
            model,
            extra={"job_id": job_id, "model": model, "worker": dead_worker},
        )
        return True
