"""One exception hierarchy for all of Kiln, split into permanent and transient.

Permanent errors are the caller's or the model's fault: never retried.
Transient errors (storage, broker, a lost worker) are retried with backoff.
Every error carries a stable ``code``, a human ``message`` and, for bad input,
the ``fields`` it concerns, so every front door can answer the same JSON:
``{"error": {"code", "message", "fields"}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class KilnError(Exception):
    code = "internal_error"
    status = 500

    def __init__(
        self,
        message: str,
        *,
        fields: Mapping[str, Any] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = dict(fields or {})
        if code:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            out["fields"] = self.fields
        return out


class PermanentError(KilnError):
    """Retrying cannot help."""


class TransientError(KilnError):
    """Retrying later may help."""

    code = "unavailable"
    status = 503


class InvalidInput(PermanentError):
    code = "invalid_request"
    status = 422


class NotFound(PermanentError):
    code = "not_found"
    status = 404


class Conflict(PermanentError):
    code = "conflict"
    status = 409


class Canceled(PermanentError):
    code = "canceled"
    status = 409


class OutOfMemory(PermanentError):
    """Even a batch of one image does not fit on the device."""

    code = "out_of_memory"
    status = 422


class GenerationFailed(PermanentError):
    code = "generation_failed"


class TimeLimitExceeded(PermanentError):
    code = "time_limit_exceeded"


class TooManyDeliveries(PermanentError):
    code = "too_many_deliveries"


class RateLimited(TransientError):
    """Too many requests or jobs for this API key; ``retry_after_s`` says when to retry."""

    code = "rate_limited"
    status = 429
    retry_after_s = 5


class TooManyStreams(RateLimited):
    """Every event-stream slot of this API process is taken; retry or poll instead."""

    code = "too_many_streams"
    status = 503
    retry_after_s = 2


class StorageUnavailable(TransientError):
    code = "storage_unavailable"


class BrokerUnavailable(TransientError):
    code = "broker_unavailable"


class EngineNotReady(TransientError):
    code = "engine_not_ready"
