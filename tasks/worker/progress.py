"""Progress and throughput writes off the engine's hot path.

The engine calls ``update`` from its step callback and ``record_batch`` after each
pipeline call; a small thread flushes, every ``interval_s``, the latest step of every
running job (one pipelined round trip for all of them) and each batch timing (one
atomic fold into the model's seconds-per-image average, for ETAs), so the GPU thread
never waits on Redis and Redis is not hammered.
"""

from __future__ import annotations

import logging
import threading

from tasks.jobs import bookkeeping as bk
from tasks.jobs.store import JobStore

log = logging.getLogger("kiln.progress")


class ProgressWriter:
    def __init__(self, store: JobStore, *, model: str, interval_s: float = 0.2) -> None:
        self.store = store
        self.model = model
        self._batches: list[tuple[float, int]] = []
        self.interval_s = interval_s
        self._latest: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kiln-progress", daemon=True)

    def start(self) -> ProgressWriter:
        self._thread.start()
        return self

    def update(self, job_id: str, step: int, steps: int) -> None:
        with self._lock:
            self._latest[job_id] = (step, steps)

    def record_batch(self, seconds: float, images: int) -> None:
        with self._lock:
            self._batches.append((seconds, images))

    def flush(self) -> None:
        with self._lock:
            batch, self._latest = self._latest, {}
            timings, self._batches = self._batches, []
        for seconds, images in timings:
            try:
                bk.record_batch(self.store.redis, self.model, seconds=seconds, images=images)
            except Exception as exc:
                log.warning("throughput not written: %s", type(exc).__name__)
        if not batch:
            return
        try:  # progress is best effort; the job goes on
            missed = self.store.progress_many(batch)
        except Exception as exc:
            missed = list(batch)
            log.warning("progress not written: %s", type(exc).__name__)
        for job_id in missed:
            log.warning("progress of %s not written", job_id)

    def discard(self, job_id: str) -> None:
        with self._lock:
            self._latest.pop(job_id, None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()

    def stop(self) -> None:
        self._stop.set()
        self.flush()
