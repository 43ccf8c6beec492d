"""One error shape for every door: ``{"error": {"code", "message", "fields"}}``.

Typed exceptions (``config.errors``) map here; a validation failure (marshmallow's,
or webargs' 422 from ``@blp.arguments``) becomes one through
``config.errors.invalid_input`` first. Nothing ever answers with a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from marshmallow import ValidationError
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, TooManyRequests

from app.auth import SUBMIT_ENDPOINTS
from config.errors import (
    JobStoreUnavailable,
    KilnError,
    PayloadTooLarge,
    RateLimited,
    TransientError,
    UnsupportedMediaType,
    invalid_input,
)

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


def from_http(exc: HTTPException) -> KilnError | None:
    """The typed error for an HTTP error whose reason Kiln can say better (413, 429)."""
    if isinstance(exc, RequestEntityTooLarge):
        limit = request.max_content_length
        images = limit != current_app.config.get("MAX_CONTENT_LENGTH")
        name = "KILN_MAX_IMAGE_BODY_BYTES" if images else "KILN_MAX_BODY_BYTES"
        return PayloadTooLarge(
            f"the request body is larger than the limit of {limit} bytes ({name})",
            fields={"body": [f"at most {limit} bytes"]},
        )
    if isinstance(exc, TooManyRequests):  # Flask-Limiter's: its description is the limit
        return RateLimited(
            f"rate limit of {exc.description} reached for this API key; retry after "
            "Retry-After seconds",
            fields={"rate_limit": [str(exc.description)]},
        )
    return None


def require_json() -> None:
    """A submit's body must be JSON (or a form, where files are taken): say so, rather
    than "prompt: Missing data"."""
    if request.method != "POST" or request.endpoint not in SUBMIT_ENDPOINTS:
        return
    if request.is_json or not (request.mimetype or request.content_length):
        return
    if request.endpoint in FORM_ENDPOINTS and request.mimetype == "multipart/form-data":
        return
    got = request.mimetype or "no Content-Type"
    wanted = "application/json" + (
        " or multipart/form-data" if request.endpoint in FORM_ENDPOINTS else ""
    )
    raise UnsupportedMediaType(
        f"the request body must be JSON with Content-Type: {wanted}, got {got}",
        fields={"Content-Type": [f"must be {wanted}, got {got}"]},
    )


# Requests that may carry image inputs get their own, larger body limit.
IMAGE_ENDPOINTS = {"jobs.Jobs", "openai.Edits", "openai.Variations"}
# Submits that take a multipart form (image files as file parts): as well as JSON on
# /v1/jobs, only a form on the edit doors (which say so themselves).
FORM_ENDPOINTS = {"jobs.Jobs", "openai.Edits", "openai.Variations"}


def image_body_limit() -> None:
    """Requests that may carry images may be as large as KILN_MAX_IMAGE_BODY_BYTES; one
    that turns out to carry none keeps the small limit (KILN_MAX_BODY_BYTES)."""
    if request.method != "POST" or request.endpoint not in IMAGE_ENDPOINTS:
        return
    small = current_app.config.get("MAX_CONTENT_LENGTH")
    request.max_content_length = current_app.config["KILN_SETTINGS"].max_image_body_bytes
    if small and (request.content_length or 0) > small:
        if request.is_json:
            body: Any = request.get_json(silent=True)
        elif request.endpoint in FORM_ENDPOINTS and request.mimetype == "multipart/form-data":
            body = {**request.form, **request.files}
        else:
            return
        if not (isinstance(body, dict) and ("image" in body or "mask" in body)):
            raise PayloadTooLarge(
                f"the request body is larger than the limit of {small} bytes "
                "(KILN_MAX_BODY_BYTES; KILN_MAX_IMAGE_BODY_BYTES with an image)",
                fields={"body": [f"at most {small} bytes"]},
            )


def store_unavailable(exc: RedisError) -> JobStoreUnavailable:
    """A Redis error that reached a door: the one error of a job store outage."""
    log.error("job store unavailable: %s", type(exc).__name__)
    return JobStoreUnavailable("the job store is unavailable; try again")


def retry_after(resp: Response, exc: KilnError) -> None:
    """A 429's or 503's ``Retry-After`` is its error's own (kept as ``g.kiln_retry_after``,
    so that no later hook, Flask-Limiter's included, puts another value there)."""
    if isinstance(exc, TransientError):
        resp.headers["Retry-After"] = g.kiln_retry_after = str(exc.retry_after_s)


def register_error_handlers(app: Flask) -> None:
    app.before_request(image_body_limit)
    app.before_request(require_json)

    @app.errorhandler(KilnError)
    def _kiln(exc: KilnError) -> Any:
        resp = jsonify(error_body(exc.code, exc.message, exc.fields))
        retry_after(resp, exc)
        return resp, exc.status

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError) -> Any:
        return _kiln(invalid_input(exc.messages))

    @app.errorhandler(RedisError)
    def _redis(exc: RedisError) -> Any:
        return _kiln(store_unavailable(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        status = exc.code or 500
        data = getattr(exc, "data", None) or {}
        if "messages" in data:  # webargs: the request did not match its schema
            return _kiln(invalid_input(data["messages"]))
        if (typed := from_http(exc)) is not None:
            return _kiln(typed)
        resp = jsonify(error_body(CODES.get(status, "error"), exc.description or exc.name))
        for k, v in (data.get("headers") or {}).items():
            resp.headers[k] = v
        return resp, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        log.exception("unhandled error: %s", type(exc).__name__)
        return jsonify(error_body("internal_error", "internal error")), 500
