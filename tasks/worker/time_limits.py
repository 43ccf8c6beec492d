"""Per-model time limits for jobs that run on a threads pool.

Celery enforces ``soft_time_limit``/``time_limit`` only in the prefork pool; Kiln's
workers use threads (one engine per process), so the task thread enforces them:

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
from typing import Any

from config.errors import Canceled, TimeLimitExceeded, Wedged


def wait_result(
    future: concurrent.futures.Future, cancel: threading.Event, *, soft_s: float, hard_s: float
) -> Any:
    """The future's result, enforcing the soft and hard limits (seconds from now)."""
    try:
        return future.result(timeout=soft_s)
    except concurrent.futures.TimeoutError:
        pass
    cancel.set()  # the engine drops the job at its next step
    try:
        return future.result(timeout=max(0.0, hard_s - soft_s))
    except concurrent.futures.TimeoutError:
        raise Wedged(
            f"job exceeded its hard time limit of {hard_s:g}s; the engine did not stop it"
        ) from None
    except Canceled:  # dropped at its next step, as asked
        raise TimeLimitExceeded(f"job exceeded its time limit of {soft_s:g}s") from None
