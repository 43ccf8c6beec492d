"""Caps on requests that hold a thread for long: event streams and synchronous waits.

Each open Server-Sent Events stream, and each synchronous OpenAI-style request waiting
for its job, holds one gunicorn ``gthread`` thread for as long as it lasts. Per API
process, at most ``KILN_SSE_MAX_STREAMS`` streams and ``KILN_SYNC_MAX_WAITS`` waits
run at once: past that a new one is answered ``503`` with ``Retry-After`` (clients
can poll ``GET /v1/jobs/<id>`` instead), so that they can never take every thread and
starve ordinary requests such as ``/healthz``. One API key (or client address, when
the API runs open) may hold at most ``KILN_KEY_SLOT_SHARE`` of each cap; past that it
gets ``429`` with ``Retry-After``.
"""

from __future__ import annotations

import collections
import contextlib
import math
import threading
from collections.abc import Iterator

from flask import Flask, Response

from config.errors import KeySlotShareExceeded, TooManyStreams, TooManyWaits


class Slots:
    """``limit`` slots per process, ``per_key`` of them for any one key."""

    def __init__(self, limit: int, *, share: float, full: type[TooManyStreams], what: str):
        self.limit = limit
        self.per_key = max(1, math.floor(limit * min(1.0, max(0.0, share))))
        self.full, self.what = full, what
        self._lock = threading.Lock()
        self._used = 0
        self._by_key: collections.Counter[str] = collections.Counter()

    def acquire(self, key: str) -> None:
        if self.limit <= 0:
            return
        with self._lock:
            if self._used >= self.limit:
                raise self.full(
                    f"{self.limit} {self.what} are open on this server; retry shortly "
                    "or poll the job"
                )
            if self._by_key[key] >= self.per_key:
                raise KeySlotShareExceeded(
                    f"this API key already holds {self.per_key} of this server's "
                    f"{self.limit} {self.what}; retry shortly or poll the job"
                )
            self._used += 1
            self._by_key[key] += 1

    def release(self, key: str) -> None:
        if self.limit <= 0:
            return
        with self._lock:
            self._used -= 1
            self._by_key[key] -= 1
            if self._by_key[key] <= 0:
                del self._by_key[key]

    @contextlib.contextmanager
    def held(self, key: str) -> Iterator[None]:
        """A slot for the body of a ``with`` (a synchronous wait)."""
        self.acquire(key)
        try:
            yield
        finally:
            self.release(key)

    def hold(self, response: Response, key: str) -> Response:
        """A slot for ``response``; given back when the response closes (a stream)."""
        self.acquire(key)
        if self.limit > 0:
            response.call_on_close(lambda: self.release(key))
        return response


def _slots(app: Flask, name: str, make: type[TooManyStreams], limit: int, share: float) -> Slots:
    found = app.extensions.get(name)
    if found is None:  # setdefault: two first requests at once still share one set
        what = "event streams" if make is TooManyStreams else "synchronous requests"
        found = app.extensions.setdefault(name, Slots(limit, share=share, full=make, what=what))
    return found


def stream_slots(app: Flask, limit: int, share: float) -> Slots:
    """The process's event-stream slots (one set per app)."""
    return _slots(app, "kiln_streams", TooManyStreams, limit, share)


def wait_slots(app: Flask, limit: int, share: float) -> Slots:
    """The process's synchronous-wait slots (one set per app)."""
    return _slots(app, "kiln_waits", TooManyWaits, limit, share)
