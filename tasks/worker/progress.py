"""Starts, progress and throughput writes off the engine's hot path.

The engine calls ``start`` when a batch begins (once per job, from its ``on_start``),
``update`` from its step callback and ``record_batch`` after each pipeline call; a
small thread writes them, so the GPU thread never waits on Redis and Redis is not
hammered:

- the jobs of a batch that began are marked ``running`` at once, in one pipelined
  round trip for the whole batch, with the steps already reported; each job's task
  thread waits on its :class:`Start` to learn whether the job is still its own;
- every ``interval_s``, the latest step of every running job (one round trip for all
  of them; a job's first step at once, so that no record shows a job running at step
  0 for longer than that step took) and each batch timing (one atomic fold into the
  model's seconds-per-image average, for ETAs).

A job's progress is written only once its start is. A start that could not be written
(the job store is down) is tried again at each tick until its task thread gives up.
"""

from __future__ import annotations

import logging
import threading

from tasks.jobs import bookkeeping as bk
from tasks.jobs.store import JobStore

log = logging.getLogger("kiln.progress")

Progress = tuple[int, int, float | None]  # step, steps, seconds left (None: unknown)


class Start:
    """One job's start, as its task thread sees it: ``written`` once the job store has
    answered, ``applied`` if the job is running on this worker from ``at`` on."""

    def __init__(self, at: float, load_wait_s: float = 0.0) -> None:
        self.at = at
        self.load_wait_s = load_wait_s
        self.written = threading.Event()
        self.applied = False
        self.abandoned = False


class ProgressWriter:
    def __init__(
        self, store: JobStore, *, model: str, worker: str = "", interval_s: float = 0.2
    ) -> None:
        self.store = store
        self.model = model
        self.worker = worker
        self.measured_on = ""  # "<device> <dtype>", once the model is loaded
        self._batches: list[tuple[float, int]] = []
        self.interval_s = interval_s
        self._latest: dict[str, Progress] = {}
        self._starts: dict[str, Start] = {}  # not written yet
        self._inflight: dict[str, Start] = {}  # being written now
        self._running: set[str] = set()  # jobs whose record says running (writable)
        self._written: set[str] = set()  # running jobs with a step written already
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kiln-progress", daemon=True)

    def start(self) -> ProgressWriter:
        self._thread.start()
        return self

    def job_started(self, job_id: str, at: float, *, load_wait_s: float = 0.0) -> Start:
        """Mark the job running from ``at`` (in memory now; written at once); its model
        was loaded for it in ``load_wait_s``."""
        ticket = Start(at, load_wait_s)
        with self._lock:
            self._starts[job_id] = ticket
        self._wake.set()
        return ticket

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
            starts, self._starts = self._starts, {}
            self._inflight = dict(starts)
            batch = {j: p for j, p in self._latest.items() if j in self._running or j in starts}
            for job_id in batch:
                del self._latest[job_id]
            timings, self._batches = self._batches, []
        for seconds, images in timings:
            try:
                bk.record_batch(
                    self.store.redis,
                    self.model,
                    seconds=seconds,
                    images=images,
                    measured_on=self.measured_on,
                )
            except Exception as exc:
                log.warning("throughput not written: %s", type(exc).__name__)
        if not batch and not starts:
            return
        try:  # progress is best effort; the job goes on
            started, missed = self.store.start_many(
                {j: s.at for j, s in starts.items()},
                load_waits={j: s.load_wait_s for j, s in starts.items() if s.load_wait_s},
                model=self.model,
                worker=self.worker,
                progress=batch,
            )
        except Exception as exc:
            started, missed = {}, list(batch)
            log.warning("starts and progress not written: %s", type(exc).__name__)
        with self._lock:
            for job_id, ticket in starts.items():
                applied = started.get(job_id)
                if applied is None:  # not written: again at the next tick
                    if not ticket.abandoned:
                        self._starts.setdefault(job_id, ticket)
                    continue
                ticket.applied = applied
                if applied and not ticket.abandoned:
                    self._running.add(job_id)
                ticket.written.set()
            self._written |= (batch.keys() - set(missed)) & self._running
            self._inflight = {}
        for job_id in missed:
            log.warning("progress of %s not written", job_id)

    def discard(self, job_id: str) -> None:
        with self._lock:
            self._latest.pop(job_id, None)
            ticket = self._starts.pop(job_id, None) or self._inflight.get(job_id)
            if ticket is not None:
                ticket.abandoned = True
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
