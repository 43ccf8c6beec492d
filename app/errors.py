"""One error shape for every door: ``{"error": {"code", "message", "fields"}}``.

Typed exceptions (``config.errors``) map here; a validation failure (marshmallow's,
or webargs' 422 from ``@blp.arguments``) becomes one through
``config.errors.invalid_input`` first. Nothing ever answers with a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify
from marshmallow import ValidationError
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

from config.errors import KilnError, RateLimited, invalid_input

log = logging.getLogger("kiln.api")
RETRY_AFTER_S = 2  # what a 503 asks a client to wait before trying again

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
    504: "timeout",
}


def error_body(code: str, message: str, fields: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if fields:
        err["fields"] = fields
    return {"error": err}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(KilnError)
    def _kiln(exc: KilnError) -> Any:
        resp = jsonify(error_body(exc.code, exc.message, exc.fields))
        if isinstance(exc, RateLimited):
            resp.headers["Retry-After"] = str(exc.retry_after_s)
        elif exc.status == 503:  # a part is down: a delay, never the end of a job
            resp.headers["Retry-After"] = str(RETRY_AFTER_S)
        return resp, exc.status

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError) -> Any:
        return _kiln(invalid_input(exc.messages))

    @app.errorhandler(RedisError)
    def _redis(exc: RedisError) -> Any:
        log.error("job store unavailable: %s", type(exc).__name__)
        resp = jsonify(error_body("unavailable", "the job store is unavailable; try again"))
        resp.headers["Retry-After"] = str(RETRY_AFTER_S)
        return resp, 503

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        status = exc.code or 500
        data = getattr(exc, "data", None) or {}
        if "messages" in data:  # webargs: the request did not match its schema
            return _kiln(invalid_input(data["messages"]))
        resp = jsonify(error_body(CODES.get(status, "error"), exc.description or exc.name))
        for k, v in (data.get("headers") or {}).items():
            resp.headers[k] = v
        return resp, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        log.exception("unhandled error: %s", type(exc).__name__)
        return jsonify(error_body("internal_error", "internal error")), 500
