"""Fleet figures for the API: the one reader of queue depths, workers and rates.

``/metrics``, ``/readyz``, the classic ``/health``, ``kiln capacity`` and a waiting
job's queue position and ETA (``JobService.view``) all read here, so a figure means
the same wherever it shows. Queue depth is the jobs waiting
for a model (submitted, not started), counted in the job store, which is right for
every broker; ``broker_messages`` is what the broker itself holds for the model's
queue (a started job's unacked message is not counted there).
"""

from __future__ import annotations

import contextlib
from typing import Any

from tasks.jobs import bookkeeping as bk
from tasks.messaging.names import queue_for


class Fleet:
    def __init__(self, redis: Any, celery: Any = None) -> None:
        self.redis = redis
        self.celery = celery

    def queue_depth(self, model: str) -> int:
        return bk.depth(self.redis, model)

    def ready_workers(self, model: str) -> int:
        return bk.ready_workers(self.redis, model)

    def standby(self, model: str) -> tuple[int, float | None]:
        """Workers that can load the model on demand, and its measured load seconds."""
        return bk.standby(self.redis, model)

    def worker_dtypes(self, model: str) -> dict[str, int]:
        return bk.worker_dtypes(self.redis, model)

    def measured_on(self, model: str) -> str | None:
        return bk.measured_on(self.redis, model)

    def s_per_image(self, model: str) -> float | None:
        return bk.s_per_image(self.redis, model)

    def waiting(self, model: str, job_id: str) -> tuple[int | None, float | None, int]:
        """A waiting job's queue position, the model's seconds per image and its ready
        workers, in one round trip (``bookkeeping.waiting``)."""
        return bk.waiting(self.redis, model, job_id)

    def job_counts(self) -> dict[tuple[str, str], int]:
        return bk.job_counts(self.redis)

    def webhook_counts(self) -> dict[str, int]:
        return bk.webhook_counts(self.redis)

    def broker_messages(self, models: list[str]) -> dict[str, int]:
        """Messages ready in each model's broker queue (Redis and AMQP alike); a queue
        the broker does not know yet counts 0, an unreachable broker gives ``{}``."""
        if self.celery is None:
            return {}
        out: dict[str, int] = {}
        try:
            with self.celery.connection_for_read() as conn:
                conn.ensure_connection(max_retries=1)
                for model in models:
                    out[model] = 0
                    with contextlib.suppress(Exception), conn.channel() as channel:
                        ok = channel.queue_declare(queue_for(model), passive=True)
                        out[model] = int(ok.message_count)
        except Exception:
            return {}
        return out
