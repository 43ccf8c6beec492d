"""Task names, queues and routing: the one small module every sender imports.

``kiln.generate`` goes to ``gen.<model>`` (one queue per model, read from its
``model`` kwarg); ``kiln.deliver_webhook`` goes to ``webhooks``. Kiln's own senders
name no queue: Celery routes by :func:`route_task`. Other services that send by name
without Kiln installed pass ``queue="gen.<model>"`` themselves (docs/celery-api.md).
"""

from __future__ import annotations

from typing import Any

GENERATE = "kiln.generate"
DELIVER_WEBHOOK = "kiln.deliver_webhook"
WEBHOOKS_QUEUE = "webhooks"


def queue_for(model: str) -> str:
    """The queue of one model's workers: ``gen.<model>``."""
    return f"gen.{model}"


def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
    """Route ``kiln.generate`` by its ``model`` kwarg, webhooks to their own queue."""
    if name == GENERATE and isinstance(kwargs, dict) and isinstance(kwargs.get("model"), str):
        return {"queue": queue_for(kwargs["model"])}
    if name == DELIVER_WEBHOOK:
        return {"queue": WEBHOOKS_QUEUE}
    return None
