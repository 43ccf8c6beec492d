"""Jobs whose message is nowhere in a Redis broker, so that the reaper can send it again.

kombu's Redis transport takes a message off its list (``BRPOP``) and only then notes the
delivery in its ``unacked`` hash: a broker that stops between the two keeps neither, and
the job waits ``queued`` with no message at all. A message can also sit in ``unacked``
with no consumer (a worker dropped it on a broker reconnect, or could not hand it back)
until the visibility timeout, many minutes later. Both are found here by the task id in
each message's headers (Kiln sends every job with ``task_id`` = the job id).

Only for Redis brokers: RabbitMQ keeps an unacked message until its consumer's
connection ends, then delivers it again at once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

TASK_ID = re.compile(r'"id":\s*"([^"]+)"')
CHUNK = 1000


def unheard(celery: Any, queue: str, job_ids: Iterable[str], *, stale_s: float) -> set[str]:
    """Of ``job_ids``, those whose message is neither waiting on ``queue`` nor in the
    hands of a consumer since less than ``stale_s`` seconds."""
    wanted = set(job_ids)
    if not wanted:
        return set()
    with celery.connection_for_read() as conn:
        channel = conn.default_channel
        client = channel.client
        for name in {channel._q_for_pri(queue, pri) for pri in channel.priority_steps}:
            for start in range(0, int(client.llen(name)), CHUNK):
                for raw in client.lrange(name, start, start + CHUNK - 1):
                    wanted -= set(TASK_ID.findall(_text(raw)))
                if not wanted:
                    return wanted
        fresh_since = time.time() - stale_s
        for tag, raw in client.hscan_iter(channel.unacked_key, count=CHUNK):
            ids = set(TASK_ID.findall(_text(raw))) & wanted
            if ids and (client.zscore(channel.unacked_index_key, tag) or 0) >= fresh_since:
                wanted -= ids
    return wanted


def _text(raw: Any) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
