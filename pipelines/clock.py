"""How long a request has spent inside pipeline calls: what its time limits count.

The engine starts a request's clock when a pipeline call that holds any of its images
begins and stops it when the call ends; waiting behind other batches never counts.
"""

from __future__ import annotations

import threading
import time


class PipelineClock:
    """Seconds a request has spent inside pipeline calls (the engine runs it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = 0.0
        self._since: float | None = None
        self.started = False  # in a pipeline call at least once

    def start(self) -> None:
        with self._lock:
            self._since, self.started = time.monotonic(), True

    def stop(self) -> None:
        with self._lock:
            if self._since is not None:
                self._total += time.monotonic() - self._since
                self._since = None

    @property
    def running(self) -> bool:
        return self._since is not None

    def seconds(self) -> float:
        with self._lock:
            extra = 0.0 if self._since is None else time.monotonic() - self._since
            return self._total + extra
