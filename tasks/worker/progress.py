"""Progress and throughput writes off the engine's hot path.

The engine calls ``update`` from its step callback and ``record_batch`` after each
pipeline call; a small thread flushes, every ``interval_s``, the latest step of every
running job (one pipelined round trip for all of them) and each batch timing (one
atomic fold into the model's seconds-per-image average, for ETAs), so the GPU thread
never waits on Redis and Redis is not hammered.

A job's progress is written only once its task thread has marked it running
(``running``); until then its latest step is kept. A job's first step, and a job just
marked running, are flushed at once rather than at the next tick, so that no record
shows a job running at step 0 for longer than its first step took.
"""

from __future__ import annotations

import logging
import threading

from tasks.jobs import bookkeeping as bk
from tasks.jobs.store import JobStore

log = logging.getLogger("kiln.progress")

Progress = tuple[int, int, float | None]  # step, steps, seconds left (None: unknown)


class ProgressWriter:
    def __init__(self, store: JobStore, *, model: str, interval_s: float = 0.2) -> None:
        self.store = store
        self.model = model
        self._batches: list[tuple[float, int]] = []
        self.interval_s = interval_s
        self._latest: dict[str, Progress] = {}
        self._running: set[str] = set()  # jobs whose record says running (writable)
        self._written: set[str] = set()  # running jobs with a step written already
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kiln-progress", daemon=True)

    def start(self) -> ProgressWriter:
        self._thread.start()
        return self

    def update(self, job_id: str, step: int, steps: int, *, eta_s: float | None = None) -> None:
        with self._lock:
            self._latest[job_id] = (step, steps, eta_s)
            first = job_id in self._running and job_id not in self._written
        if first:
            self._wake.set()

    def running(self, job_id: str) -> None:
        """The job's record says running: its progress may be written from now on."""
        with self._lock:
            self._running.add(job_id)
            due = job_id in self._latest
        if due:
            self._wake.set()

    def record_batch(self, seconds: float, images: int) -> None:
        with self._lock:
            self._batches.append((seconds, images))

    def flush(self) -> None:
        with self._lock:
            batch = {j: p for j, p in self._latest.items() if j in self._running}
            for job_id in batch:
                del self._latest[job_id]
            self._written |= batch.keys()
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
            self._running.discard(job_id)
            self._written.discard(job_id)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self.flush()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.flush()
