"""Kiln's work layer, in three rooms:

- ``tasks.jobs``: the job domain that the API and the workers share: the job store,
  records, the job schema, Redis bookkeeping and fleet figures, the job service
  (submit, read, follow, cancel), object storage and URL safety. No torch.
- ``tasks.worker``: what runs inside worker processes: the ``kiln.generate`` and
  ``kiln.deliver_webhook`` tasks, the runtime around the engine, progress, time
  limits, image encoding, worker metrics. The API never imports it.
- ``tasks.messaging``: the Celery wiring: the app factory and the task names and
  routing that every sender imports.

``celery -A tasks worker`` / ``celery -A tasks flower`` find the app here.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in {"app", "celery"}:
        from tasks.messaging.app import get_celery

        return get_celery()
    raise AttributeError(name)
