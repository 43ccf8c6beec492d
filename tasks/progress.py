"""Progress writes off the engine's hot path.

The engine calls ``update`` from its step callback; a small thread flushes the
latest step of every running job to the job store every ``interval_s`` in one round
trip, so the GPU thread never waits on Redis and Redis is not hammered.
"""

from __future__ import annotations

import logging
import threading

from tasks.jobs import JobStore

log = logging.getLogger("kiln.progress")


class ProgressWriter:
    def __init__(self, store: JobStore, *, interval_s: float = 0.2) -> None:
        self.store = store
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

    def flush(self) -> None:
        with self._lock:
            batch, self._latest = self._latest, {}
        for job_id, (step, steps) in batch.items():
            try:
                self.store.progress(job_id, step, steps)
            except Exception as exc:  # progress is best effort; the job goes on
                log.warning("progress of %s not written: %s", job_id, type(exc).__name__)

    def discard(self, job_id: str) -> None:
        with self._lock:
            self._latest.pop(job_id, None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()

    def stop(self) -> None:
        self._stop.set()
        self.flush()
