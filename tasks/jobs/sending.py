"""The one way a ``kiln.generate`` message is sent: by the job service (after the record
is written), by the reaper (a recorded job sent again) and by ``send_generate`` (the
Celery door's helper, whose worker records the job on receipt).

It talks to the broker only, never to the job store: a sender needs no Redis access.
"""

from __future__ import annotations

from typing import Any

from celery.result import AsyncResult

from tasks.jobs.records import kwargs_repr
from tasks.messaging.names import GENERATE, route_task


def send_generate_message(
    celery: Any, kwargs: dict[str, Any], *, task_id: str | None = None, ignore_result: bool = False
) -> AsyncResult:
    """Send ``kiln.generate`` with ``kwargs`` to its model's queue. The queue is named
    here, so a caller's own Celery app (without Kiln's routes) sends where Kiln's does;
    Flower and task events show the kwargs with the webhook URL redacted."""
    route = route_task(GENERATE, (), kwargs, {}) or {}
    return celery.send_task(
        GENERATE,
        kwargs=kwargs,
        kwargsrepr=kwargs_repr(kwargs),
        task_id=task_id,
        ignore_result=ignore_result,
        **route,
    )
