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
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from config.settings import is_redis_url
from tasks.jobs import bookkeeping as bk
from tasks.jobs.records import kwargs_repr, task_kwargs_from_record
from tasks.messaging.names import DELIVER_WEBHOOK, GENERATE
from tasks.worker.runtime import HEARTBEAT_TTL_S, Runtime

log = logging.getLogger("kiln.reaper")
REAP_S = 2.0


class Reaper:
    def __init__(self, runtime: Runtime, *, period_s: float = REAP_S) -> None:
        self.runtime = runtime
        self.period_s = period_s
        self._since_outage = time.monotonic()  # contact is fresh from start-up on
        # On RabbitMQ a dead consumer's messages come back at once; re-sending its jobs
        # would only add copies that wait for the first to end.
        self.resend_jobs = is_redis_url(runtime.settings.broker_url)

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
            for job_id, worker in bk.running_jobs(r, model).items():
                if bk.worker_alive(r, model, worker):
                    continue
                if self.resend(model, job_id, worker):
                    sent.append(job_id)
        for job_id in bk.overdue_webhooks(r):
            bk.webhook_due(r, job_id, in_s=rt.settings.webhook_lease_s)
            rt.celery.send_task(DELIVER_WEBHOOK, kwargs={"job_id": job_id})
            log.warning("webhook of job %s overdue; sent again", job_id, extra={"job_id": job_id})
        return sent

    def resend(self, model: str, job_id: str, dead_worker: str) -> bool:
        store = self.runtime.store
        record = store.get(job_id)
        if record is None or not store.requeue(
            job_id, model=model, dead_worker=dead_worker, score=record.get("created_at") or 0
        ):
            return False
        kwargs: dict[str, Any] = task_kwargs_from_record(record)
        self.runtime.celery.send_task(
            GENERATE, kwargs=kwargs, kwargsrepr=kwargs_repr(kwargs), task_id=job_id
        )
        log.warning(
            "job %s: worker %s died; sent again to %s",
            job_id,
            dead_worker,
            model,
            extra={"job_id": job_id, "model": model, "worker": dead_worker},
        )
        return True
