"""What every door hands the job domain: one typed request in, one answer out.

Each door (``/v1/jobs`` as JSON or a form, classic ``/generate``, the OpenAI
generations, edits and variations, and the ``kiln.generate`` task for a message no
record names yet) turns its own shape into a :class:`JobRequest`, in the job schema's
field names, and calls ``JobService.accept``; no door validates, counts, records or
sends a job itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

DOORS = ("rest", "classic", "openai", "celery")


@dataclass(frozen=True, kw_only=True)
class JobRequest:
    """One submit, as a door read it.

    ``fields``: the loaded job fields (the job schema's names); ``door``: which door
    (``DOORS``, also the record's ``source``); ``owner``: the API key's name;
    ``idempotency_key`` and ``body`` (what the key compares); ``read_job(id)``: a job
    this caller may read, or None (for image inputs given as a job's output);
    ``holder``: the API key (or client address) whose share of the image-URL fetch
    slots its fetches take.
    """

    fields: Mapping[str, Any]
    door: str
    owner: str | None = None
    idempotency_key: str | None = None
    body: Any = None
    read_job: Callable[[str], dict[str, Any] | None] | None = None
    job_id: str | None = None
    holder: str = ""  # whose share of per-process caps it takes (the API key, or address)
    sent: bool = False  # the Celery door: its message is on the broker already

    def __post_init__(self) -> None:
        if self.door not in DOORS:
            raise ValueError(f"unknown door {self.door!r}; one of {DOORS}")


@dataclass(frozen=True, kw_only=True)
class Accepted:
    """A job accepted: its record (as its door shows it), whether this request made it
    (False: the job an Idempotency-Key made before), and its validated params."""

    record: dict[str, Any]
    created: bool
    params: dict[str, Any] = field(default_factory=dict)
