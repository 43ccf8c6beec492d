"""The job record: built once at submit, then only moved forward by the worker."""

from __future__ import annotations

import re
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from tasks.jobs.store import now

PARAM_KEYS = (
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "steps",
    "guidance_scale",
    "scheduler",
    "n",
    "seed",
    "loras",
    "output_format",
    "output_compression",
    "mode",
    "strength",
    "image",
    "mask",
)


# What callers see of a record (``GET /v1/jobs/<id>``); the API adds queue position
# and ETA to a waiting job. A webhook carries the job's outcome, not its live state.
PUBLIC_FIELDS = (
    "id",
    "status",
    "model",
    "params",
    "seeds",
    "created_at",
    "started_at",
    "completed_at",
    "progress",
    "images",
    "error",
    "attempts",
    "webhook",
    "batch_id",
    "batch_size",
    "batches",
    "queue_position",
    "eta_s",
    "run_s",
    "upload_s",
    "worker",
    "load_wait_s",
)
LIVE_FIELDS = frozenset({"progress", "webhook", "batches", "queue_position", "eta_s"})
WEBHOOK_FIELDS = tuple(
    f
    for f in PUBLIC_FIELDS
    if f not in LIVE_FIELDS | {"run_s", "upload_s", "worker", "load_wait_s"}
)


def public_view(record: dict[str, Any], fields: tuple[str, ...] = PUBLIC_FIELDS) -> dict[str, Any]:
    return {k: record.get(k) for k in fields}


def new_job_id() -> str:
    return uuid.uuid4().hex


# Job ids name Redis keys and storage prefixes (``generated/<job_id>/``): a fixed, safe
# alphabet for every door (uuid hex, Celery's dashed uuids, or a sender's own ids).
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
JOB_ID_RULE = "1 to 64 characters: letters, digits, '_' or '-'"


def valid_job_id(job_id: Any) -> bool:
    return isinstance(job_id, str) and JOB_ID.match(job_id) is not None


# What a ``kiln.generate`` message names of its job, besides its ids: the one list the
# message, the record's params and the comparison of a message with a record share.
MESSAGE_KEYS = (*PARAM_KEYS, "model", "seeds", "webhook_url")


@dataclass(kw_only=True)
class JobRecord:
    """A job's record as the job store keeps it (each field one hash field, as JSON).

    Made once when the job comes in (:meth:`new`), then only moved forward by the job
    store's scripts; :meth:`to_dict` is what is written, :meth:`to_task_kwargs` the
    message that runs it, :meth:`public` what its owner sees."""

    id: str
    model: str | None
    params: dict[str, Any] | None
    seeds: list[int]
    owner: str | None = None
    source: str = "api"
    status: str = "queued"
    created_at: float = field(default_factory=now)
    started_at: float | None = None
    completed_at: float | None = None
    progress: dict[str, Any] | None = None
    images: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    attempts: int = 0
    webhook: dict[str, Any] | None = None
    batch_id: str | None = None
    batch_size: int | None = None

    @classmethod
    def new(
        cls, job_id: str, params: dict[str, Any], *, owner: str | None = None, source: str = "api"
    ) -> JobRecord:
        """The record of a job made from validated params."""
        webhook = None
        if params.get("webhook_url"):
            webhook = {"url": params["webhook_url"], "state": "pending", "attempts": 0}
        return cls(
            id=job_id,
            model=params["model"],
            params={k: params.get(k) for k in PARAM_KEYS},
            seeds=list(params["seeds"]),
            owner=owner,
            source=source,
            progress={"step": 0, "steps": params["steps"]},
            webhook=webhook,
        )

    @classmethod
    def refused(cls, job_id: str, model: Any) -> JobRecord:
        """The record of a message the worker could not read as a job (it fails at once):
        no params, only what it may say of itself."""
        return cls(
            id=job_id,
            model=model if isinstance(model, str) else None,
            params=None,
            seeds=[],
            source="celery",
        )

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> JobRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def message_view(self) -> dict[str, Any]:
        """What its message names (``MESSAGE_KEYS``), as the record says it."""
        hook = self.webhook or {}
        view = {**(self.params or {}), "model": self.model, "seeds": list(self.seeds)}
        view["webhook_url"] = hook.get("url")
        return {k: view.get(k) for k in MESSAGE_KEYS}

    def to_task_kwargs(self) -> dict[str, Any]:
        """The ``kiln.generate`` kwargs that (re-)send this job (same id, same seeds)."""
        return task_kwargs(self.id, self.message_view(), self.owner)

    def differences(self, params: dict[str, Any], owner: str | None) -> list[str]:
        """What a message for this job asks that its record does not say (empty: the
        same job, e.g. delivered again)."""
        mine = self.message_view()
        diff = [k for k in MESSAGE_KEYS if _same(k, mine.get(k)) != _same(k, params.get(k))]
        if self.owner != owner:
            diff.append("owner")
        return diff

    def public(self, fields: tuple[str, ...] = PUBLIC_FIELDS) -> dict[str, Any]:
        return public_view(self.to_dict(), fields)


def _same(key: str, value: Any) -> Any:
    return list(value or []) if key == "seeds" else value


def differences(record: dict[str, Any], params: dict[str, Any], owner: str | None) -> list[str]:
    """What a message for an existing job asks that its record does not say (empty: the
    same job, e.g. delivered again)."""
    return JobRecord.from_dict(record).differences(params, owner)


def new_record(
    job_id: str, params: dict[str, Any], *, owner: str | None = None, source: str = "api"
) -> dict[str, Any]:
    return JobRecord.new(job_id, params, owner=owner, source=source).to_dict()


def task_kwargs(job_id: str, params: dict[str, Any], owner: str | None = None) -> dict[str, Any]:
    """The ``kiln.generate`` kwargs for validated params (the public task contract).

    ``owner`` (the API key's name) lets the worker tell this job's own message from
    another one that reuses its id."""
    out = {k: params.get(k) for k in MESSAGE_KEYS}
    out["seeds"] = list(params["seeds"])
    out["job_id"] = job_id
    if owner:
        out["owner"] = owner
    return out


def task_kwargs_from_record(record: dict[str, Any]) -> dict[str, Any]:
    """The ``kiln.generate`` kwargs that re-send a recorded job (same id, same seeds)."""
    return JobRecord.from_dict(record).to_task_kwargs()


def redact_webhook_url(url: str) -> str:
    """``https://user:pw@hooks.example.com/T0/token?sig=x`` → ``https://hooks.example.com/***``.

    Webhook URLs often carry a token in their path, query or credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}/***"


def kwargs_repr(kwargs: dict[str, Any]) -> str:
    """What Flower and task events show for ``kiln.generate`` kwargs (no webhook token)."""
    shown = dict(kwargs)
    if shown.get("webhook_url"):
        shown["webhook_url"] = redact_webhook_url(str(shown["webhook_url"]))
    return repr(shown)[:1024]


def task_result(record: dict[str, Any]) -> dict[str, Any]:
    """The record a ``kiln.generate`` task returns. Celery logs it and Flower shows it,
    so its webhook URL is redacted (the job store keeps the real one) and its images
    carry their storage keys, never a URL: a presigned URL is a credential for as long
    as it lives. The API signs URLs when it answers (``JobService.view``)."""
    out = dict(record)
    hook = record.get("webhook")
    if isinstance(hook, dict) and hook.get("url"):
        out["webhook"] = {**hook, "url": redact_webhook_url(str(hook["url"]))}
    if isinstance(record.get("images"), list):
        out["images"] = [
            {k: v for k, v in image.items() if k != "url"} if isinstance(image, dict) else image
            for image in record["images"]
        ]
    return out
