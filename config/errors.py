"""One exception hierarchy for all of Kiln, split into permanent and transient.

Permanent errors are the caller's or the model's fault: never retried.
Transient errors (storage, broker, a lost worker) are retried with backoff.
Every error carries a stable ``code``, a human ``message`` and, for bad input,
the ``fields`` it concerns, so every front door can answer the same JSON:
``{"error": {"code", "message", "fields"}}``. :func:`invalid_input` is the one way
a validation failure (marshmallow's or webargs' messages) becomes an error.

Settings and model-file errors are ``ValueError``s too, so a bad configuration
reads as one wherever it is caught; the stand-alone ``app/client.py`` keeps its own.
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
    """Retrying later may help (``retry_after_s``: when, as a 503's ``Retry-After``)."""

    code = "unavailable"
    status = 503
    retry_after_s = 2


class MalformedBody(PermanentError):
    """The body (or a form field that carries JSON) cannot be read: not JSON, or nested
    deeper than Kiln reads."""

    code = "malformed_body"
    status = 400


class InvalidInput(PermanentError):
    code = "invalid_request"
    status = 422


class PayloadTooLarge(PermanentError):
    """The request body is larger than the API accepts; the message names the limit."""

    code = "payload_too_large"
    status = 413


class UnsupportedMediaType(PermanentError):
    """The request body is not JSON (``Content-Type: application/json``)."""

    code = "unsupported_media_type"
    status = 415


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


class ModelUnavailable(PermanentError):
    """A model this worker serves cannot be loaded (missing, corrupt, wrong family, larger
    than the memory budget): its jobs fail with the reason; it is not tried again until its
    source changes."""

    code = "model_unavailable"
    status = 422


class GenerationFailed(PermanentError):
    code = "generation_failed"


class TimeLimitExceeded(PermanentError):
    code = "time_limit_exceeded"


class QueueWaitExceeded(PermanentError):
    """The job waited in its worker longer than ``KILN_QUEUE_WAIT_LIMIT_S`` before it ran."""

    code = "queue_wait_exceeded"


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


class Unreachable(TransientError):
    """A webhook receiver gave no usable answer (no address, no connection, too slow)."""

    code = "unreachable"


class TooManyWaits(TooManyStreams):
    """Every synchronous-request slot of this API process is taken; retry or poll."""

    code = "too_many_waits"


class TooManyFetches(TooManyStreams):
    """Every image-URL fetch slot of this API process is taken; retry shortly."""

    code = "too_many_fetches"


class KeySlotShareExceeded(RateLimited):
    """This API key holds its whole share of a process's stream or wait slots."""

    code = "key_slot_share_exceeded"
    retry_after_s = 2


class StorageUnavailable(TransientError):
    code = "storage_unavailable"


class BrokerUnavailable(TransientError):
    """The broker refused a message."""

    code = "broker_unavailable"


class JobStoreUnavailable(TransientError):
    """The job store (Redis) did not answer: every door says so the same way."""

    code = "job_store_unavailable"


class EngineNotReady(TransientError):
    code = "engine_not_ready"


class Wedged(TimeLimitExceeded):
    """The engine kept a job past its hard time limit: this worker must restart."""

    code = "time_limit_exceeded"


class RunningElsewhere(TransientError):
    """A re-delivered message for a job that a live worker is still running."""

    code = "running_elsewhere"

    def __init__(self, worker: str) -> None:
        super().__init__(f"job still runs on {worker}")
        self.worker = worker


class SettingsError(ValueError):
    """A ``KILN_*`` variable has a value Kiln cannot use; the message names it."""


class DeviceUnavailable(SettingsError):
    """The device a worker was asked to serve on is not there; the message says why and
    what to do (a worker never falls back to the CPU unless asked)."""


class ModelConfigError(ValueError):
    """models.yaml has an entry Kiln cannot use; the message names it."""


class CheckpointError(ModelConfigError):
    """A single-file checkpoint Kiln will not load (a pickle, not safetensors, another
    family's keys); the message names the file and the reason."""


class UnknownModel(KeyError):
    """No model of that name in the registry."""


class UnknownFamily(KeyError):
    """No model family of that name."""


_LOCATIONS = {"json", "query", "form", "headers", "path", "files", "cookies"}


def flatten_messages(messages: Any) -> dict[str, Any]:
    """Validation messages keyed by field name (webargs nests them by location)."""
    if isinstance(messages, Mapping):
        if messages and set(messages) <= _LOCATIONS:
            out: dict[str, Any] = {}
            for v in messages.values():
                out.update(flatten_messages(v))
            return out
        return {str(k): v for k, v in messages.items()}
    return {"_schema": messages if isinstance(messages, list) else [str(messages)]}


def _first(detail: Any) -> str:
    while isinstance(detail, list | tuple) and detail:
        detail = detail[0]
    if isinstance(detail, Mapping) and detail:
        key, value = next(iter(detail.items()))
        return f"{key}: {_first(value)}"
    return str(detail)


def invalid_input(messages: Any) -> InvalidInput:
    """The error for any validation failure; its message names each field and why."""
    fields = flatten_messages(messages)
    if set(fields) == {"_schema"}:
        return InvalidInput(f"invalid request body: {_first(fields['_schema'])}", fields=fields)
    reasons = "; ".join(f"{name}: {_first(fields[name])}" for name in sorted(fields, key=str))
    return InvalidInput(f"invalid {reasons}", fields=fields)
