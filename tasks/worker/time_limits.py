"""Per-model time limits for jobs that run on a threads pool, counted on the job's own clock.

Celery enforces ``soft_time_limit``/``time_limit`` only in the prefork pool; Kiln's
workers use threads (one engine per process), so the task thread enforces them. Both
count the job's own pipeline time (its ``PipelineClock``: the time spent inside
pipeline calls that hold its images), never the time it waited behind other batches,
so that one heavy batch cannot time out the light jobs queued after it:

- **queue wait** (``KILN_QUEUE_WAIT_LIMIT_S``): a job that has not reached a pipeline
  call that long after the worker took it fails with ``queue_wait_exceeded``.
- **soft** (``soft_time_limit_s``): the thread stops waiting on the engine's future
  and sets the job's cancel event; the engine drops the job at its next denoising
  step, without disturbing its batch-mates. The job fails with ``time_limit_exceeded``.
- **hard** (``time_limit_s``): if the engine has still not let go of the job by then
  (one step stuck for ``time_limit_s - soft_time_limit_s``), the engine is wedged:
  the job fails, and the caller ends the worker process (``Wedged``) so that its
  supervisor starts a fresh one and the other jobs it held are delivered again.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any, Protocol

from config.errors import Canceled, QueueWaitExceeded, TimeLimitExceeded, Wedged


class Clock(Protocol):
    started: bool

    @property
    def running(self) -> bool: ...

    def seconds(self) -> float: ...


class WallClock:
    """Counts from its creation: the limits on a plain future (no engine clock)."""

    started = running = True

    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def seconds(self) -> float:
        return time.monotonic() - self._t0


def wait_started(woken: threading.Event, cancel: threading.Event, *, queue_wait_s: float) -> None:
    """Wait until ``woken`` (set when the engine puts the job on the device, or when its
    future is done), failing with ``QueueWaitExceeded`` past ``queue_wait_s`` (0: no
    limit); the job's cancel event then makes the engine drop it before it runs."""
    taken = time.monotonic()
    if woken.wait(queue_wait_s if queue_wait_s > 0 else None):
        return
    cancel.set()
    raise _queue_wait_exceeded(time.monotonic() - taken, queue_wait_s)


def _queue_wait_exceeded(waited: float, limit: float) -> QueueWaitExceeded:
    return QueueWaitExceeded(
        f"job waited {waited:.0f}s in its worker without reaching the GPU "
        f"(KILN_QUEUE_WAIT_LIMIT_S={limit:g})"
    )


def wait_result(
    future: concurrent.futures.Future,
    cancel: threading.Event,
    *,
    soft_s: float,
    hard_s: float,
    clock: Clock | None = None,
    queue_wait_s: float = 0.0,
) -> Any:
    """The future's result, enforcing the queue-wait, soft and hard limits."""
    clock = clock or WallClock()
    taken = time.monotonic()
    while (own := clock.seconds()) < soft_s:
        wait = soft_s - own  # own time runs no faster than the wall clock
        if queue_wait_s > 0 and not clock.started:
            waited = time.monotonic() - taken
            if waited >= queue_wait_s:
                cancel.set()  # the engine drops it before it runs
                raise _queue_wait_exceeded(waited, queue_wait_s)
            wait = min(wait, queue_wait_s - waited)
        try:
            return future.result(timeout=wait)
        except concurrent.futures.TimeoutError:
            continue
    cancel.set()  # the engine drops the job at its next step
    stopped_since: float | None = None
    try:
        while (left := hard_s - clock.seconds()) > 0:
            if clock.running:
                stopped_since = None
            else:  # between batches: dropped when the engine next looks, or given up
                stopped_since = stopped_since or time.monotonic()
                if time.monotonic() - stopped_since >= hard_s - soft_s:
                    break
            try:
                return future.result(timeout=min(left, max(0.05, hard_s - soft_s)))
            except concurrent.futures.TimeoutError:
                continue
    except Canceled:  # dropped at its next step, as asked
        raise TimeLimitExceeded(f"job exceeded its time limit of {soft_s:g}s") from None
    if stopped_since is not None:
        raise TimeLimitExceeded(f"job exceeded its time limit of {soft_s:g}s")
    raise Wedged(f"job exceeded its hard time limit of {hard_s:g}s; the engine did not stop it")
