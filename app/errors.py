"""One error shape for every door: ``{"error": {"code", "message", "fields"}}``.

Typed exceptions (``config.errors``), marshmallow validation errors and HTTP
errors all map here; nothing ever answers with a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify
from marshmallow import ValidationError
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

from config.errors import KilnError, RateLimited

log = logging.getLogger("kiln.api")

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


def flatten_messages(messages: Any) -> dict[str, Any]:
    """webargs nests errors by location (``{"json": {...}}``); keep the field names."""
    if isinstance(messages, dict):
        if set(messages) <= {"json", "query", "form", "headers", "path", "files"}:
            out: dict[str, Any] = {}
            for v in messages.values():
                out.update(flatten_messages(v))
            return out
        return dict(messages)
    return {"_schema": messages if isinstance(messages, list) else [str(messages)]}


def validation_message(fields: dict[str, Any]) -> str:
    names = ", ".join(sorted(fields))
    return f"invalid value for {names}" if names != "_schema" else "invalid request body"


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(KilnError)
    def _kiln(exc: KilnError) -> Any:
        resp = jsonify(error_body(exc.code, exc.message, exc.fields))
        if isinstance(exc, RateLimited):
            resp.headers["Retry-After"] = str(exc.retry_after_s)
        return resp, exc.status

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError) -> Any:
        fields = flatten_messages(exc.messages)
        return jsonify(error_body("invalid_request", validation_message(fields), fields)), 422

    @app.errorhandler(RedisError)
    def _redis(exc: RedisError) -> Any:
        log.error("job store unavailable: %s", type(exc).__name__)
        return jsonify(error_body("unavailable", "the job store is unavailable; try again")), 503

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        status = exc.code or 500
        data = getattr(exc, "data", None) or {}
        fields = flatten_messages(data["messages"]) if "messages" in data else None
        message = validation_message(fields) if fields else exc.description or exc.name
        resp = jsonify(error_body(CODES.get(status, "error"), message, fields))
        for k, v in (data.get("headers") or {}).items():
            resp.headers[k] = v
        return resp, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        log.exception("unhandled error: %s", type(exc).__name__)
        return jsonify(error_body("internal_error", "internal error")), 500
