"""Riding out an outage of the job store or of object storage without losing a job.

A worker that cannot read or record a job, or upload its images, tries again with
exponential backoff on the task thread, with the job's message still unacked, for up
to ``KILN_OUTAGE_BUDGET_S`` (600 s by default). When the part is back, the job goes on
and ends in its true state exactly once (the end script applies once). Past the
budget the message goes back to the broker (``Reject(requeue=True)``) so that a later
delivery tries again; a job is never acked while its end is unrecorded.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from config.errors import JobStoreUnavailable, TransientError

log = logging.getLogger("kiln.outages")
T = TypeVar("T")
FIRST_WAIT_S = 0.5
MAX_WAIT_S = 15.0


def patiently(runtime: Any, job_id: str, what: str, call: Callable[[], T]) -> T:
    """``call()`` for one job on a worker's runtime, through an outage (``patient``)."""
    return patient(
        call,
        budget_s=runtime.settings.outage_budget_s,
        what=what,
        job_id=job_id,
        store=runtime.store,
    )


def patient(
    call: Callable[[], T],
    *,
    budget_s: float,
    what: str,
    job_id: str,
    store: Any = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, tried again on ``TransientError`` until ``budget_s`` has passed.

    While the job store answers (an S3 outage), each wait is a ``retrying`` event on
    the job, so its owner sees why it is slow.
    """
    deadline = time.monotonic() + budget_s
    wait = FIRST_WAIT_S
    while True:
        try:
            return call()
        except TransientError as exc:
            if time.monotonic() + wait > deadline:
                raise
            log.warning(
                "job %s: cannot %s (%s); trying again in %.1fs",
                job_id,
                what,
                exc.code,
                wait,
                extra={"job_id": job_id},
            )
            if store is not None and not isinstance(exc, JobStoreUnavailable):
                with contextlib.suppress(TransientError):
                    store.transition(
                        job_id,
                        allowed_from=("running",),
                        event="retrying",
                        data={"reason": exc.code, "in_s": round(wait, 2), "what": what},
                    )
            sleep(wait)
            wait = min(MAX_WAIT_S, wait * 2)
