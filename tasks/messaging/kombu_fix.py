"""Keep a Celery worker alive when its Redis broker goes away and comes back.

With celery 5.7.0 / kombu 5.7.0, a threads-pool worker that loses its Redis broker
while it holds unacked messages dies ("Unrecoverable error: AttributeError:
'NoneType' object has no attribute 'hostname'"): the consumer releases the broken
connection, and closing its channel, or acking a message of that channel later,
builds a new Redis pool from a connection that is already released. kombu and
Celery handle a *connection error* at each of those places (log it, restore later,
reconnect), so a released connection is reported as one. A message whose ack was
lost stays in Redis's unacked set; the visibility timeout brings it back, and the
job's recorded state makes the copy a no-op.
"""

from __future__ import annotations

from typing import Any


def keep_workers_alive_on_redis_loss() -> None:
    import redis
    from kombu.transport import redis as kombu_redis

    channel: Any = kombu_redis.Channel
    if getattr(channel._connparams, "_kiln_checked", False):
        return
    original = channel._connparams

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection was released")
        return original(self, asynchronous=asynchronous)

    _connparams._kiln_checked = True  # type: ignore[attr-defined]
    channel._connparams = _connparams
