"""A cap on open Server-Sent Event streams per API process.

Each open stream holds one gunicorn ``gthread`` thread for as long as it lasts; past
``KILN_SSE_MAX_STREAMS`` a new stream is answered ``503 too_many_streams`` with
``Retry-After`` (clients can poll ``GET /v1/jobs/<id>`` instead), so that streams can
never take every thread and starve ordinary requests.
"""

from __future__ import annotations

import threading

from flask import Flask, Response

from config.errors import TooManyStreams


class StreamSlots:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sem = threading.BoundedSemaphore(max(1, limit))

    def hold(self, response: Response) -> Response:
        """Take a slot for ``response``; it is given back when the response closes."""
        if self.limit <= 0:
            return response
        if not self._sem.acquire(blocking=False):
            raise TooManyStreams(
                f"{self.limit} event streams are open on this server; retry shortly or poll the job"
            )
        response.call_on_close(self._sem.release)
        return response


def slots(app: Flask, limit: int) -> StreamSlots:
    """The process's slots (one set per app)."""
    found = app.extensions.get("kiln_streams")
    if found is None:  # setdefault: two first requests at once still share one set
        found = app.extensions.setdefault("kiln_streams", StreamSlots(limit))
    return found
