"""The Celery task API for other Python services (contract v1, docs/celery-api.md).

Without Kiln installed (only ``celery`` and ``redis``):

    from celery import Celery
    app = Celery(broker="redis://127.0.0.1:6390/0", backend="redis://127.0.0.1:6390/0")
    res = app.send_task("kiln.generate", kwargs={"prompt": "a red fox", "model": "tiny-sd"},
                        queue="gen.tiny-sd")
    record = res.get(timeout=120)          # the job record, as JSON

With Kiln installed, this helper fills in the queue and validates first:

    from tasks.jobs.celery_door import send_generate
    record = send_generate(prompt="a red fox", model="tiny-sd").get(timeout=120)
"""

from __future__ import annotations

from typing import Any

from celery.result import AsyncResult

from tasks.jobs.sending import send_generate_message
from tasks.messaging.app import get_celery

CONTRACT_VERSION = 1


def send_generate(*, app: Any = None, **job: Any) -> AsyncResult:
    """Send ``kiln.generate`` to the model's queue; ``.get()`` returns the job record.

    The task id is the job id: ``GET /v1/jobs/<id>`` shows the same job.
    """
    from config.settings import get_settings
    from pipelines.registry import Registry
    from tasks.jobs.schema import load_job

    app = app or get_celery()
    params = load_job(job, Registry.from_settings(get_settings()))
    kwargs = {k: v for k, v in params.items() if v is not None}
    return send_generate_message(app, kwargs)  # ``app`` may be the caller's own
