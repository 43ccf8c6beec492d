"""The Celery app: JSON only, one queue per model, settings for long GPU tasks.

The task modules are listed in ``include=``: a worker imports them when it starts,
while the API and other senders build the same app without importing any of them
(they send tasks by name).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from celery import Celery
from celery.signals import setup_logging as celery_setup_logging
from kombu import Queue

from config.settings import Settings, get_settings
from config.tls import redis_ssl_options
from tasks.messaging.kombu_fix import keep_workers_alive_on_redis_loss
from tasks.messaging.names import WEBHOOKS_QUEUE, queue_for, route_task

TASK_MODULES = ("tasks.worker.generate", "tasks.worker.webhooks")


def visibility_timeout(settings: Settings, longest_time_limit_s: int) -> int:
    """Above the longest healthy job, or a running job is delivered twice (Redis): its
    wait in the worker (``queue_wait_limit_s``) plus its own pipeline time."""
    waited = longest_time_limit_s + int(settings.queue_wait_limit_s) + 60
    return settings.visibility_timeout_s or max(600, 2 * longest_time_limit_s, waited)


def kiln_logging(**_: Any) -> None:
    """Celery's ``setup_logging`` signal: a worker started as ``celery -A tasks worker``
    (the webhooks worker) logs through Kiln's redacting handler, as every Kiln process."""
    from config.logging import setup_logging

    setup_logging(get_settings())


def make_celery(settings: Settings | None = None, *, longest_time_limit_s: int = 360) -> Celery:
    settings = settings or get_settings()
    keep_workers_alive_on_redis_loss()
    # Connected here, not at import: only processes that build an app set logging up.
    celery_setup_logging.connect(kiln_logging, weak=False, dispatch_uid="kiln-logging")
    app = Celery("kiln", set_as_current=False, include=list(TASK_MODULES))
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.redis_url,
        result_expires=settings.job_ttl_s,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        # Long GPU tasks: ack after the work, re-deliver if the worker dies, take one at a time.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        task_routes=(route_task,),
        task_default_queue="kiln",
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": visibility_timeout(settings, longest_time_limit_s),
            # Look for a dead worker's unacked messages every few seconds, not every ~100 s.
            "unacked_restore_interval": 2,
            "unacked_restore_throttle": 1,
        },
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    # rediss:// broker or result backend: verified against the configured CA.
    if settings.broker_url.startswith("rediss://"):
        app.conf.broker_use_ssl = redis_ssl_options(settings)
    if settings.redis_url.startswith("rediss://"):
        app.conf.redis_backend_use_ssl = redis_ssl_options(settings)
    return app


def show_queues(app: Celery, models: Iterable[str]) -> Celery:
    """Flower's view of the app: its broker tab lists each model's ``gen.<model>`` queue
    and ``webhooks`` from the start. (With no worker reporting yet, Flower lists the
    default queue and ``task_queues``, so it showed a ``kiln`` queue nothing uses.) For
    Flower's process only: a worker started without ``-Q`` would consume every queue
    listed here."""
    names = [*(queue_for(m) for m in models), WEBHOOKS_QUEUE]
    app.conf.task_queues = [Queue(name, routing_key=name) for name in names]
    app.conf.task_default_queue = names[0]
    return app


@lru_cache(maxsize=1)
def get_celery() -> Celery:
    """The process-wide app for ``celery -A tasks`` (refused on the dev defaults in prod)."""
    from config.models import load_models
    from config.production import refuse_dev_defaults
    from config.tls import check_tls

    settings = get_settings()
    refuse_dev_defaults(settings)
    check_tls(settings)
    longest = max((m.time_limit_s for m in load_models(settings.models_file).values()), default=360)
    return make_celery(settings, longest_time_limit_s=longest)
