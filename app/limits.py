"""Per-key rate limits and concurrent-job quotas, shared by every API process via Redis.

Flask-Limiter counts submits per API key (per client address when the API runs open)
in the job store's Redis, so all gunicorn workers and API hosts share one budget;
a 429 carries ``Retry-After`` (only a 429 or a 503 does). The concurrent-job quota
counts each key's queued and running jobs (counted by the job service as jobs start
and end).
"""

from __future__ import annotations

from flask import Flask, Response, g, request
from flask_limiter import Limiter

from app.auth import SUBMIT_ENDPOINTS, owner
from config.settings import Settings
from config.tls import redis_client_options
from tasks.jobs.bookkeeping import RATE_LIMIT_PREFIX


def limit_key() -> str:
    return f"key:{owner()}" if owner() else f"addr:{request.remote_addr}"


def not_a_submit() -> bool:
    return request.method != "POST" or request.endpoint not in SUBMIT_ENDPOINTS


def retry_after_only_when_asked(response: Response) -> Response:
    """``Retry-After`` means "wait before you try again": only a 429 or a 503 says that
    (Flask-Limiter would put it on every limited answer, a 202 included)."""
    if response.status_code not in (429, 503):
        response.headers.pop("Retry-After", None)
    elif "kiln_retry_after" in g:  # the error's own value, not the limiter's window
        response.headers["Retry-After"] = g.kiln_retry_after
    return response


def init_limits(app: Flask, settings: Settings) -> Limiter:
    # after_request hooks run last-registered first: this one runs after the limiter's.
    app.after_request(retry_after_only_when_asked)
    return Limiter(
        key_func=limit_key,
        app=app,
        storage_uri=settings.redis_url,
        storage_options=redis_client_options(settings, settings.redis_url),
        # Two counters per key and window (a moving window keeps one list entry per
        # request: 100 000 entries at the default limit, searched on every submit).
        strategy="sliding-window-counter",
        headers_enabled=True,
        key_prefix=RATE_LIMIT_PREFIX,
        application_limits=[settings.rate_limit],
        application_limits_exempt_when=not_a_submit,
        swallow_errors=True,  # Redis down: the submit itself answers 503, not the limiter 500
    )
