"""Kiln's work layer: the Celery app, the generate and webhook tasks, the job
store and object storage. Importing it never imports torch: ``pipelines`` is
loaded lazily, inside the worker.

``celery -A tasks worker`` / ``celery -A tasks flower`` find the app here.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in {"app", "celery"}:
        from tasks.celery_app import get_celery

        return get_celery()
    raise AttributeError(name)
