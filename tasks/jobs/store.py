"""The job store: one Redis hash per job plus a stream of its events, and the job's
state machine.

``kiln:job:{<id>}`` holds the record (each field JSON-encoded), ``kiln:job:{<id>}:events``
the ordered events (``queued``, ``received``, ``started``, ``progress``, terminal) that
feed the live event stream; both are spelled in ``tasks.jobs.bookkeeping``, as every
key is, and both expire after ``job_ttl_s``. Each state change is one atomic script
(``submit``, ``discard``, ``receive``, ``start``, ``progress``, ``requeue``, ``end``)
and only moves forward: a canceled job never turns ``running`` again. Every Redis
failure here is a ``JobStoreUnavailable``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis

from config.errors import JobStoreUnavailable
from config.settings import Settings
from tasks.jobs import bookkeeping as bk
from tasks.jobs import holding
from tasks.jobs.bookkeeping import events_key, job_key
from tasks.jobs.scripts import CREATE, DISCARD, END, REQUEUE, TRANSITION

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
LIVE = ("queued", "running")
MAX_BLOCK_MS = 20_000  # longest XREAD BLOCK; its client's read timeout sits above it


def _transition_argv(
    ttl_s: int,
    status: str | None,
    allowed_from: Iterable[str] | None,
    event: str | None,
    data: Any,
    fields: Mapping[str, Any],
) -> list[Any]:
    """ARGV of the transition script (the status is never also a plain field)."""
    argv: list[Any] = [
        ttl_s,
        "*" if allowed_from is None else ",".join(allowed_from),
        status or "",
        event or "",
        json.dumps(data if data is not None else {}),
    ]
    for k, v in fields.items():
        if not (status is not None and k == "status"):
            argv += [k, json.dumps(v)]
    return argv


def now() -> float:
    return round(time.time(), 3)


class JobStore:
    def __init__(
        self,
        redis_url: str,
        *,
        ttl_s: int = 7 * 24 * 3600,
        connection: Mapping[str, Any] | None = None,
    ) -> None:
        """``connection``: more redis-py keywords (TLS: ``config.tls.redis_client_options``)."""
        extra = dict(connection or {})
        self.redis: Any = redis.Redis.from_url(
            redis_url,
            decode_responses=True,
            socket_connect_timeout=5,
            health_check_interval=30,
            **extra,
        )
        self.ttl_s = ttl_s
        self._transition = self.redis.register_script(TRANSITION)
        self._end = self.redis.register_script(END)
        self._requeue = self.redis.register_script(REQUEUE)
        self._create = self.redis.register_script(CREATE)
        self._discard = self.redis.register_script(DISCARD)
        self._receive = self.redis.register_script(holding.RECEIVE)
        self._start = self.redis.register_script(holding.START)
        # redis-py reads with a 5 s socket timeout by default: blocking reads (live
        # events) get a client of their own whose timeout sits above the longest block.
        self._blocking: Any = redis.Redis.from_url(
            redis_url,
            decode_responses=True,
            socket_connect_timeout=5,
            socket_timeout=MAX_BLOCK_MS / 1000 + 10,
            health_check_interval=30,
            **extra,
        )

    @classmethod
    def for_settings(cls, settings: Settings) -> JobStore:
        """The store at ``KILN_REDIS_URL``, over TLS as the settings say."""
        from config.tls import redis_client_options

        return cls(
            settings.redis_url,
            ttl_s=settings.job_ttl_s,
            connection=redis_client_options(settings, settings.redis_url),
        )

    # -- reads --------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any] | None:
        try:
            raw = self.redis.hgetall(job_key(job_id))
        except redis.RedisError as exc:
            raise JobStoreUnavailable(f"job store unreachable: {type(exc).__name__}") from exc
        if not raw:
            return None
        return {k: json.loads(v) for k, v in raw.items()}

    def field(self, job_id: str, name: str) -> Any:
        """One field of a record (None when absent)."""
        try:
            raw = self.redis.hget(job_key(job_id), name)
        except redis.RedisError as exc:
            raise JobStoreUnavailable(f"job store unreachable: {type(exc).__name__}") from exc
        return None if raw is None else json.loads(raw)

    def events(
        self, job_id: str, after: str = "0-0", *, block_ms: int | None = None
    ) -> list[tuple[str, str, Any]]:
        """Events after stream id ``after``: ``[(event_id, type, data), ...]``.

        ``block_ms`` waits up to that long (at most ``MAX_BLOCK_MS``) for new events.
        """
        client = self.redis
        if block_ms is not None:
            client, block_ms = self._blocking, min(block_ms, MAX_BLOCK_MS)
        try:
            res = client.xread({events_key(job_id): after}, block=block_ms, count=500)
        except redis.RedisError as exc:
            raise JobStoreUnavailable(f"job store unreachable: {type(exc).__name__}") from exc
        out: list[tuple[str, str, Any]] = []
        for _stream, entries in res or []:
            for eid, fields in entries:
                out.append((eid, fields["type"], json.loads(fields["data"])))
        return out

    # -- writes -------------------------------------------------------------
    def create(
        self,
        record: Mapping[str, Any],
        *,
        event: str = "queued",
        also: Callable[[Any], None] | None = None,
    ) -> bool:
        """Write a new record; False when a record with that id already exists.

        An ``HSETNX`` of the id claims it first; then one transaction writes the whole
        record, its first event and whatever ``also(pipe)`` adds (queue bookkeeping).
        """
        key = job_key(record["id"])
        fields = {k: json.dumps(v) for k, v in record.items()}
        try:
            if not self.redis.hsetnx(key, "id", fields["id"]):
                return False
            with self.redis.pipeline() as pipe:
                pipe.hset(key, mapping=fields)
                pipe.expire(key, self.ttl_s)
                pipe.xadd(
                    events_key(record["id"]),
                    {
                        "type": event,
                        "data": json.dumps(
                            {"status": record.get("status"), "at": record.get("created_at")}
                        ),
                    },
                    maxlen=2000,
                )
                pipe.expire(events_key(record["id"]), self.ttl_s)
                if also is not None:
                    also(pipe)
                pipe.execute()
        except redis.RedisError as exc:
            raise JobStoreUnavailable(f"job store unreachable: {type(exc).__name__}") from exc
        return True

    def submit(
        self,
        record: Mapping[str, Any],
        *,
        quota: int = 0,
        idempotency: tuple[str, str, int] | None = None,
    ) -> tuple[str, Any]:
        """Write a new job's record with its first event, its queue place, its owner's
        quota slot and index entry, and claim its Idempotency-Key, in one step.

        ``quota``: at most that many live jobs for the record's owner; ``idempotency``:
        ``(key, value, ttl_s)``. Returns ``("created", None)``, ``("idem", the claimed
        key's value)``, ``("quota", live jobs)`` or ``("exists", None)``; nothing is
        written but on ``created``.
        """
        job_id, owner = record["id"], record.get("owner")
        created = float(record["created_at"])
        idem_key, idem_value, idem_ttl = idempotency or (bk.idempotency_key(owner, ""), "", 0)
        keys = self._submit_keys(job_id, record["model"], owner, idem_key)
        event = json.dumps({"status": record.get("status"), "at": record.get("created_at")})
        argv: list[Any] = [
            self.ttl_s,
            job_id,
            created,
            quota,
            int(bool(owner)),
            int(idempotency is not None),
            idem_value,
            idem_ttl,
            created - self.ttl_s - bk.OWNED_KEEP_S,
            self.ttl_s + bk.OWNED_KEEP_S,
            event,
        ]
        for k, v in record.items():
            argv += [k, json.dumps(v)]
        try:
            res = self._create(keys=keys, args=argv)
        except redis.RedisError as exc:
            raise JobStoreUnavailable(f"job store unreachable: {type(exc).__name__}") from exc
        outcome = str(res[0])
        return outcome, (res[1] if len(res) > 1 else None)

    def discard(
        self, job_id: str, *, model: str, owner: str | None, idempotency_key: str | None
    ) -> bool:
        """Take back a submit whose message was never sent: its record and all that
        counts it, and its Idempotency-Key. False when a worker has received it since
        (its message went out after all) or it is gone."""
        idem_key = idempotency_key or bk.idempotency_key(owner, "")
        keys = self._submit_keys(job_id, model, owner, idem_key)
        try:
            return bool(self._discard(keys=keys, args=[job_id]))
        except redis.RedisError as exc:
            raise JobStoreUnavailable(f"job store unreachable: {type(exc).__name__}") from exc

    def idempotent(self, key: str) -> Any:
        """The value an Idempotency-Key's claim holds (None: not claimed)."""
        try:
            raw = self.redis.get(key)
        except redis.RedisError as exc:
            raise JobStoreUnavailable(f"job store unreachable: {type(exc).__name__}") from exc
        return None if raw is None else json.loads(raw)

    def release(self, key: str, job_id: str) -> None:
        """Free an Idempotency-Key whose job has gone (its record expired)."""
        try:
            if (self.idempotent(key) or {}).get("job_id") == job_id:
                self.redis.delete(key)
        except redis.RedisError as exc:
            raise JobStoreUnavailable(f"job store unreachable: {type(exc).__name__}") from exc

    def live_jobs(self, owner: str | None) -> int:
        """The owner's queued and running jobs (what its quota counts)."""
        try:
            return bk.active_jobs(self.redis, owner)
        except redis.RedisError as exc:
            raise JobStoreUnavailable(f"job store unreachable: {type(exc).__name__}") from exc

    @staticmethod
    def _submit_keys(job_id: str, model: str, owner: str | None, idem_key: str) -> list[str]:
        return [
            job_key(job_id),
            events_key(job_id),
            bk.queued_key(model),
            bk.active_key(owner or "-"),
            bk.owned_key(owner),
            idem_key,
        ]

    def transition(
        self,
        job_id: str,
        *,
        status: str | None = None,
        allowed_from: Iterable[str] | None = None,
        event: str | None = None,
        data: Any = None,
        **fields: Any,
    ) -> tuple[str | None, bool]:
        """Atomically set ``status`` and ``fields`` if the current status is allowed.

        Returns ``(previous_status, applied)``; previous is None when the job does
        not exist. A terminal status is never set here: ``end`` (through
        ``tasks.jobs.ends.end_job``) is the one way a job ends.
        """
        if status in TERMINAL:
            raise ValueError(f"a job ends only through end_job, not transition({status!r})")
        argv = _transition_argv(self.ttl_s, status, allowed_from, event, data, fields)
        try:
            res = self._run_transition(job_id, argv)
        except redis.RedisError as exc:
            raise JobStoreUnavailable(f"job store unreachable: {type(exc).__name__}") from exc
        if not res:
            return None, False
        return res[0], bool(res[1])

    def receive(self, job_id: str, *, model: str, worker: str, attempt: int) -> bool:
        """A worker took the job's message (``tasks.jobs.holding``): it stays ``queued``
        and keeps its queue place, now held by ``worker`` (the reaper's to send again
        should that worker die). False when it had ended (or is gone)."""
        data = json.dumps({"attempt": attempt, "worker": worker})
        keys = [job_key(job_id), events_key(job_id), bk.queued_key(model), bk.held_key(model)]
        args: list[Any] = [self.ttl_s, worker, job_id, json.dumps(attempt), json.dumps(now()), data]
        try:
            res = self._receive(keys=keys, args=args)
        except redis.RedisError as exc:
            raise JobStoreUnavailable(f"job store unreachable: {type(exc).__name__}") from exc
        return bool(res and res[1])

    def start(self, job_id: str, *, model: str, worker: str, at: float | None = None) -> bool:
        """Mark a job ``running`` (its batch is on the device since ``at``) and take it out
        of the queued set, in one step; only while it waits on ``worker``."""
        data = json.dumps({"worker": worker})
        started = json.dumps(round(at, 3) if at is not None else now())
        keys = [job_key(job_id), events_key(job_id), bk.queued_key(model)]
        try:
            res = self._start(keys=keys, args=[self.ttl_s, worker, job_id, started, data])
        except redis.RedisError as exc:
            raise JobStoreUnavailable(f"job store unreachable: {type(exc).__name__}") from exc
        return bool(res and res[1])

    def requeue(self, job_id: str, *, model: str, dead_worker: str, score: float) -> bool:
        """Put a job held by ``dead_worker`` (waiting there or running) back in its
        model's queued set."""
        argv: list[Any] = [
            self.ttl_s,
            dead_worker,
            job_id,
            score,
            json.dumps({"worker": dead_worker}),
        ]
        keys = [job_key(job_id), events_key(job_id), bk.queued_key(model), bk.held_key(model)]
        try:
            return bool(self._requeue(keys=keys, args=argv))
        except redis.RedisError as exc:
            raise JobStoreUnavailable(f"job store unreachable: {type(exc).__name__}") from exc

    def end(
        self,
        job_id: str,
        status: str,
        *,
        allowed_from: Iterable[str],
        data: Any = None,
        **fields: Any,
    ) -> tuple[str | None, dict[str, Any] | None]:
        """Move a job to a terminal ``status`` and clear its bookkeeping, atomically.

        Returns ``(previous status, the ended record)``; the record is None when the
        job was not in ``allowed_from`` (or is gone) and nothing changed. Only
        ``tasks.jobs.ends.end_job`` calls this: a job ends in one place.
        """
        argv: list[Any] = [
            self.ttl_s,
            ",".join(allowed_from),
            status,
            json.dumps(data if data is not None else {}),
        ]
        for k, v in fields.items():
            argv += [k, json.dumps(v)]
        try:
            # Its model and owner never change once written: read first, so that every
            # key the script touches is one of its KEYS.
            raw_model, raw_owner = self.redis.hmget(job_key(job_id), ["model", "owner"])
            model = json.loads(raw_model) if raw_model else None
            owner = json.loads(raw_owner) if raw_owner else None
            keys = [
                job_key(job_id),
                events_key(job_id),
                bk.JOB_COUNTERS,
                bk.queued_key(model if isinstance(model, str) else ""),
                bk.active_key(owner if isinstance(owner, str) else "-"),
                bk.held_key(model if isinstance(model, str) else ""),
            ]
            res = self._end(keys=keys, args=argv)
        except redis.RedisError as exc:
            raise JobStoreUnavailable(f"job store unreachable: {type(exc).__name__}") from exc
        if not res:
            return None, None
        if not res[1]:
            return res[0], None
        flat = res[2]
        return res[0], {flat[i]: json.loads(flat[i + 1]) for i in range(0, len(flat), 2)}

    def progress(self, job_id: str, step: int, steps: int) -> None:
        try:
            self._run_transition(job_id, self._progress_argv(step, steps))
        except redis.RedisError as exc:
            raise JobStoreUnavailable(f"job store unreachable: {type(exc).__name__}") from exc

    def progress_many(
        self, steps_by_job: Mapping[str, tuple[int, int] | tuple[int, int, float | None]]
    ) -> list[str]:
        """Set the progress (step, steps and, if known, seconds left) of running jobs, one
        round trip for all; the ids not written."""
        return self.start_many({}, model="", worker="", progress=steps_by_job)[1]

    def start_many(
        self,
        starts: Mapping[str, float],
        *,
        model: str,
        worker: str,
        progress: Mapping[str, tuple[int, int] | tuple[int, int, float | None]] | None = None,
        load_waits: Mapping[str, float] | None = None,
    ) -> tuple[dict[str, bool | None], list[str]]:
        """Mark the jobs of a batch ``running`` (as ``start``: ``{job_id: began at}``), then
        write the progress of running jobs, all in one round trip. Returns, per start,
        whether it applied (None: not written), and the progress ids not written."""
        progress = progress or {}
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id, at in starts.items():
                self._start(
                    keys=[job_key(job_id), events_key(job_id), bk.queued_key(model)],
                    args=[
                        self.ttl_s,
                        worker,
                        job_id,
                        json.dumps(round(at, 3)),
                        json.dumps({"worker": worker}),
                        json.dumps((load_waits or {}).get(job_id)),
                    ],
                    client=pipe,
                )
            for job_id, steps in progress.items():
                self._run_transition(job_id, self._progress_argv(*steps), client=pipe)
            try:
                results = pipe.execute(raise_on_error=False) if len(pipe) else []
            except redis.RedisError as exc:
                raise JobStoreUnavailable(f"job store unreachable: {type(exc).__name__}") from exc
        started: dict[str, bool | None] = {
            j: None if isinstance(r, Exception) else bool(r and r[1])
            for j, r in zip(starts, results, strict=False)
        }
        rest = results[len(starts) :]
        return started, [j for j, r in zip(progress, rest, strict=True) if isinstance(r, Exception)]

    def _progress_argv(self, step: int, steps: int, eta_s: float | None = None) -> list[Any]:
        """A running job's progress: the field and a ``progress`` event."""
        progress: dict[str, Any] = {"step": step, "steps": steps}
        if eta_s is not None:
            progress["eta_s"] = eta_s
        return _transition_argv(
            self.ttl_s, None, ("running",), "progress", progress, {"progress": progress}
        )

    def _run_transition(self, job_id: str, argv: list[Any], client: Any = None) -> Any:
        return self._transition(
            keys=[job_key(job_id), events_key(job_id)], args=argv, client=client
        )

    def dequeue(self, job_id: str, *, model: str) -> None:
        """Take a job that had ended out of its model's queued set (a late delivery)."""
        try:
            bk.mark_dequeued(self.redis, model, job_id)
        except redis.RedisError as exc:
            raise JobStoreUnavailable(f"job store unreachable: {type(exc).__name__}") from exc

    def worker_alive(self, *, model: str, worker: str) -> bool:
        """Whether that worker's heartbeat is live."""
        try:
            return bk.worker_alive(self.redis, model, worker)
        except redis.RedisError as exc:
            raise JobStoreUnavailable(f"job store unreachable: {type(exc).__name__}") from exc

    def ask_cancel(self, job_id: str) -> None:
        """Ask the worker that holds the job to stop it (``bookkeeping.CANCEL_CHANNEL``)."""
        try:
            self.redis.publish(bk.CANCEL_CHANNEL, job_id)
        except redis.RedisError as exc:
            raise JobStoreUnavailable(f"job store unreachable: {type(exc).__name__}") from exc

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False
