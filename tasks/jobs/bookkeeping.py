"""Redis bookkeeping around jobs, and every Redis key Kiln spells (Celery's own broker
and result keys are Celery's).

- ``kiln:job:{<id>}`` and ``kiln:job:{<id>}:events``: a job's record and its events
  (one hash tag per job), which only the job store (``tasks.jobs.store``) reads and
  writes; its scripts take every key they touch as ``KEYS``.
- ``kiln:ratelimit``: the prefix of Flask-Limiter's counters (``app.limits``).

- ``kiln:queued:<model>``: a sorted set by submit time of the jobs waiting for that
  model, in the broker or inside a worker that took them but has not put them on the
  device yet; a waiting job's queue position is its rank there.
- ``kiln:running:<model>``: a hash of the jobs a worker of that model holds (waiting
  in it or running) → that worker, which the reaper walks to find jobs whose worker
  died.
- ``kiln:active:<owner>``: the queued and running jobs of one API key (its quota).
- ``kiln:idem:<owner>:<sha256 of the key>``: an ``Idempotency-Key`` claimed, with
  the job it made and a digest of the body; claimed with the record, in one step.
- ``kiln:owned:<owner>`` (``kiln:owned`` for jobs made without a key): a sorted set by
  submit time of every job of one API key, what ``GET /v1/jobs`` lists. Each submit
  trims it to the jobs the store may still hold, and it expires with its newest job.
- ``kiln:stats:<model>``: a moving average of seconds per image, folded in atomically
  by every worker after each pipeline call (the ETA's rate).
- ``kiln:alive:<model>:<worker>`` and ``kiln:workers:<model>``: each worker's
  heartbeat. The key says the process is alive (until its drain has ended); the
  sorted set keeps the expiry (the server's clock) of each worker that is *ready* for
  new jobs, so counting ready workers is one O(log N) call, never a keyspace scan.
- ``kiln:webhooks:due``: a sorted set of the jobs whose webhook is not settled yet, by
  the time it is due to be sent again should its message be lost (a killed webhooks
  worker, a broker that refused it); the reaper re-sends the overdue ones.
- ``kiln:reaper``: a short lock, so that one worker at a time looks for jobs whose
  worker died.
- ``kiln:counters:jobs`` and ``kiln:counters:webhooks``: fleet-wide counts of jobs
  ended (counted by the job store's end script) and of webhook deliveries, which the
  API's ``/metrics`` shows for every host; ``kiln:counters:reaper``: the reapers'
  lost-message sweeps, done and with messages found missing.
- ``kiln:cancel``: the channel on which the API asks workers to stop a running job.

Functions take a Redis client or a pipeline, so callers can add them to one round trip.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

log = logging.getLogger("kiln.bookkeeping")

EMA_ALPHA = 0.3
RATE_LIMIT_PREFIX = "kiln:ratelimit"


# A job's own keys share one hash tag (``{<id>}``), so that a Redis Cluster keeps them
# in one slot: a script that touches only them may run there.
def job_key(job_id: str) -> str:
    return f"kiln:job:{{{job_id}}}"


def events_key(job_id: str) -> str:
    return f"kiln:job:{{{job_id}}}:events"


CANCEL_CHANNEL = "kiln:cancel"
JOB_COUNTERS = "kiln:counters:jobs"
WEBHOOK_COUNTERS = "kiln:counters:webhooks"
REAPER_COUNTERS = "kiln:counters:reaper"


def queued_key(model: str) -> str:
    return f"kiln:queued:{model}"


def stats_key(model: str) -> str:
    return f"kiln:stats:{model}"


def workers_key(model: str) -> str:
    return f"kiln:workers:{model}"


def standby_key(model: str) -> str:
    """Workers that serve ``model`` without holding it now: they load it on demand."""
    return f"kiln:standby:{model}"


def taking_key(model: str) -> str:
    """Claimed by the one worker taking ``model`` in now (so that two never both do)."""
    return f"kiln:taking:{model}"


def alive_key(model: str, worker: str) -> str:
    return f"kiln:alive:{model}:{worker}"


REAPER_LOCK = "kiln:reaper"
WEBHOOKS_DUE = "kiln:webhooks:due"


def held_key(model: str) -> str:
    """The jobs workers of ``model`` hold, waiting in them or running (the key keeps its
    first name, ``running``, so that a fleet being upgraded reads the same hash)."""
    return f"kiln:running:{model}"


def active_key(owner: str) -> str:
    return f"kiln:active:{owner}"


def idempotency_key(owner: str | None, key: str) -> str:
    """Where an API key's Idempotency-Key is claimed (the header's value hashed)."""
    return f"kiln:idem:{owner or '-'}:{hashlib.sha256(key.encode()).hexdigest()}"


# -- the queued set ------------------------------------------------------------
def mark_queued(r: Any, model: str, job_id: str, created_at: float) -> None:
    r.zadd(queued_key(model), {job_id: created_at})


def mark_dequeued(r: Any, model: str, job_id: str) -> None:
    r.zrem(queued_key(model), job_id)


def queued_before(r: Any, model: str, before: float, *, limit: int = 10_000) -> list[str]:
    """The oldest queued jobs of ``model`` (not yet running), submitted before ``before``."""
    return list(r.zrangebyscore(queued_key(model), "-inf", before, start=0, num=limit))


def depth(r: Any, model: str) -> int:
    """Jobs waiting for ``model`` (submitted, not yet on a device), whatever the broker."""
    return int(r.zcard(queued_key(model)))


# -- an API key's active jobs -----------------------------------------------------
def mark_active(r: Any, owner: str | None, job_id: str, *, ttl_s: int) -> None:
    """Count a job against its key's quota; the set expires with the newest job's record,
    so nothing outlives the jobs it counts (each job leaves it when it ends)."""
    if owner:
        r.sadd(active_key(owner), job_id)
        r.expire(active_key(owner), ttl_s)


def active_jobs(r: Any, owner: str | None) -> int:
    return int(r.scard(active_key(owner))) if owner else 0


# -- an API key's jobs, newest first ---------------------------------------------------
OWNED_KEEP_S = 24 * 3600  # beyond a record's TTL: a job's record lives on while it runs


def owned_key(owner: str | None) -> str:
    return f"kiln:owned:{owner}" if owner else "kiln:owned"


def mark_owned(r: Any, owner: str | None, job_id: str, created_at: float, *, ttl_s: int) -> None:
    """Index a job under its key; entries older than any record still stored are trimmed."""
    key = owned_key(owner)
    r.zadd(key, {job_id: created_at})
    r.zremrangebyscore(key, "-inf", f"({created_at - ttl_s - OWNED_KEEP_S}")
    r.expire(key, ttl_s + OWNED_KEEP_S)


def owned_score(r: Any, owner: str | None, job_id: str) -> float | None:
    score = r.zscore(owned_key(owner), job_id)
    return None if score is None else float(score)


def owned_chunk(
    r: Any, owner: str | None, *, up_to: float | None, offset: int, count: int
) -> list[tuple[str, float]]:
    """``count`` of the key's jobs submitted at or before ``up_to``, newest first."""
    top = "+inf" if up_to is None else repr(up_to)
    rows = r.zrevrangebyscore(
        owned_key(owner), top, "-inf", start=offset, num=count, withscores=True
    )
    return [(str(m), float(s)) for m, s in rows]


def forget_owned(r: Any, owner: str | None, job_ids: list[str]) -> None:
    """Drop jobs whose records have expired from the key's index."""
    if job_ids:
        r.zrem(owned_key(owner), *job_ids)


# -- throughput and ETA -------------------------------------------------------------
# KEYS[1] the model's stats hash; ARGV seconds per image of one batch, alpha. Read and
# write in one script, so that two workers folding at once never lose a sample.
_FOLD = """
local old = redis.call('HGET', KEYS[1], 's_per_image')
local v = tonumber(ARGV[1])
if old then v = (1 - tonumber(ARGV[2])) * tonumber(old) + tonumber(ARGV[2]) * v end
redis.call('HSET', KEYS[1], 's_per_image', string.format('%.6f', v))
"""


def record_batch(r: Any, model: str, *, seconds: float, images: int, measured_on: str = "") -> None:
    """Fold one pipeline call into the moving average of seconds per image, and say
    where it ran (``"cpu fp32"``, ``"cuda fp16"``): a CPU stand-in's timings are no GPU's."""
    if images > 0:
        r.eval(_FOLD, 1, stats_key(model), seconds / images, EMA_ALPHA)
        if measured_on:
            r.hset(stats_key(model), "measured_on", measured_on)


def record_load(r: Any, model: str, *, seconds: float) -> None:
    """A worker loaded ``model`` in ``seconds`` (the ETA of a job no worker holds it for
    adds this)."""
    r.hset(stats_key(model), "load_s", f"{seconds:.3f}")


def standby(r: Any, model: str) -> tuple[int, float | None]:
    """``(workers that can load model on demand, its last measured load seconds)``."""
    with r.pipeline(transaction=False) as pipe:
        pipe.eval(_READY_COUNT, 1, standby_key(model))
        pipe.hget(stats_key(model), "load_s")
        count, load_s = pipe.execute()
    return int(count), None if load_s is None else float(load_s)


def measured_on(r: Any, model: str) -> str | None:
    """Where the model's seconds per image were measured (device and dtype)."""
    raw = r.hget(stats_key(model), "measured_on")
    return None if raw is None else str(raw)


def s_per_image(r: Any, model: str) -> float | None:
    raw = r.hget(stats_key(model), "s_per_image")
    return None if raw is None else float(raw)


def eta_s(*, position: int, images: int, workers: int, s_per_image: float) -> float:
    """Seconds until a waiting job is done: jobs ahead (one image each, whether still in
    the broker or waiting inside a worker) plus its own, shared by the ready workers."""
    return round(max(s_per_image, (position - 1 + images) * s_per_image / max(1, workers)), 2)


def running_eta_s(*, step: int, steps: int, elapsed_s: float, fallback_s: float) -> float:
    """Seconds until a running job's steps are done, from its own step timings: the
    time its steps so far took (``elapsed_s`` since its batch began) per step, times
    the steps left; ``fallback_s`` before its first step is reported."""
    if step <= 0 or elapsed_s <= 0:
        return round(max(0.0, fallback_s), 2)
    return round(max(0.0, elapsed_s / step * (steps - step)), 2)


# -- worker heartbeats ------------------------------------------------------------
# KEYS[1] the model's worker set: workers whose heartbeat has not expired (server clock).
_READY_COUNT = "return redis.call('ZCOUNT', KEYS[1], '(' .. redis.call('TIME')[1], '+inf')"


_READY_NAMES = "return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. redis.call('TIME')[1], '+inf')"


# KEYS[1] the worker's alive key, KEYS[2] the model's ready set, KEYS[3] its standby set;
# ARGV worker, ttl, state (ready | standby | draining), dtype.
_BEAT_STATE = """
local t = redis.call('TIME')
redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[2])
local into, outof = nil, {KEYS[2], KEYS[3]}
if ARGV[3] == 'ready' then into, outof = KEYS[2], {KEYS[3]}
elseif ARGV[3] == 'standby' then into, outof = KEYS[3], {KEYS[2]} end
if into then redis.call('ZADD', into, t[1] + ARGV[2], ARGV[1]) end
for _, key in ipairs(outof) do redis.call('ZREM', key, ARGV[1]) end
for _, key in ipairs({KEYS[2], KEYS[3]}) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', t[1] - 3600)
  redis.call('EXPIRE', key, 3600)
end
"""


def beat_all(
    r: Any, worker: str, ttl_s: int, *, states: dict[str, str], dtypes: dict[str, str]
) -> None:
    """One beat of a worker for each model it serves, in one round trip: ``states`` says
    per model ``ready`` (it holds the model and consumes its queue), ``standby`` (it
    loads the model on demand) or ``draining`` (alive, neither)."""
    with r.pipeline(transaction=False) as pipe:
        for model, state in states.items():
            keys = (alive_key(model, worker), workers_key(model), standby_key(model))
            pipe.eval(_BEAT_STATE, 3, *keys, worker, ttl_s, state, dtypes.get(model) or "1")
        pipe.execute()


def beat(
    r: Any, model: str, worker: str, ttl_s: int, *, ready: bool = True, dtype: str = ""
) -> None:
    """One model's beat (a worker of one model): ready, or alive only while it drains.
    The alive key holds the dtype the worker runs ('1' before it knows)."""
    state = "ready" if ready else "draining"
    beat_all(r, worker, ttl_s, states={model: state}, dtypes={model: dtype})


def fleet_demand(r: Any, models: list[str]) -> dict[str, tuple[int, float | None, list[str]]]:
    """Per model: jobs waiting, the oldest one's submit time (None: none wait) and the
    ready workers holding it, in one round trip."""
    with r.pipeline(transaction=False) as pipe:
        for model in models:
            pipe.zcard(queued_key(model))
            pipe.zrange(queued_key(model), 0, 0, withscores=True)
            pipe.eval(_READY_NAMES, 1, workers_key(model))
        out = pipe.execute()
    demand = {}
    for i, model in enumerate(models):
        count, oldest, names = out[3 * i : 3 * i + 3]
        demand[model] = (int(count), float(oldest[0][1]) if oldest else None, list(names))
    return demand


def take_model(r: Any, model: str, worker: str, ttl_s: int) -> bool:
    """True for the one worker that takes ``model`` in now (the claim expires by itself)."""
    return bool(r.set(taking_key(model), worker, nx=True, ex=ttl_s))


def worker_dtypes(r: Any, model: str) -> dict[str, int]:
    """``{dtype: ready workers}``: the precision the model's ready workers really run."""
    names = r.eval(_READY_NAMES, 1, workers_key(model))
    out: dict[str, int] = {}
    for value in r.mget([alive_key(model, n) for n in names]) if names else []:
        if value and value != "1":
            out[value] = out.get(value, 0) + 1
    return out


def not_ready(r: Any, model: str, worker: str) -> None:
    """Stop counting a worker as ready (it still beats as alive while it drains)."""
    r.zrem(workers_key(model), worker)
    r.zrem(standby_key(model), worker)


def unbeat(r: Any, model: str, worker: str) -> None:
    with r.pipeline() as pipe:
        pipe.delete(alive_key(model, worker))
        pipe.zrem(workers_key(model), worker)
        pipe.zrem(standby_key(model), worker)
        pipe.execute()


def worker_alive(r: Any, model: str, worker: str) -> bool:
    return bool(r.exists(alive_key(model, worker)))


def held_jobs(r: Any, model: str) -> dict[str, str]:
    """``{job_id: worker}`` of the jobs workers of ``model`` hold (waiting or running)."""
    return dict(r.hgetall(held_key(model)) or {})


def take_reaper_lock(r: Any, holder: str, ttl_ms: int) -> bool:
    """True for the one worker that reaps now (the lock expires by itself)."""
    return bool(r.set(REAPER_LOCK, holder, nx=True, px=ttl_ms))


def take_resend(r: Any, job_id: str, ttl_s: int) -> bool:
    """True for the one reaper that sends a lost job again in this ``ttl_s`` window."""
    return bool(r.set(f"kiln:resent:{job_id}", 1, nx=True, ex=ttl_s))


def ready_workers(r: Any, model: str) -> int:
    """Workers of ``model`` whose heartbeat has not expired."""
    return int(r.eval(_READY_COUNT, 1, workers_key(model)))


def waiting(r: Any, model: str, job_id: str) -> tuple[int | None, float | None, int]:
    """``(position, seconds per image or None, ready workers)`` in one round trip."""
    with r.pipeline(transaction=False) as pipe:
        pipe.zrank(queued_key(model), job_id)
        pipe.hget(stats_key(model), "s_per_image")
        pipe.eval(_READY_COUNT, 1, workers_key(model))  # EVALSHA would add a SCRIPT EXISTS
        rank, rate, workers = pipe.execute()
    return (
        None if rank is None else int(rank) + 1,
        None if rate is None else float(rate),
        int(workers),
    )


# -- webhooks not settled yet -------------------------------------------------------
def webhook_due(r: Any, job_id: str, *, in_s: float) -> None:
    """The job's webhook must be settled within ``in_s``, or it is sent again."""
    r.zadd(WEBHOOKS_DUE, {job_id: time.time() + in_s})


def webhook_settled(r: Any, job_id: str) -> None:
    r.zrem(WEBHOOKS_DUE, job_id)


def overdue_webhooks(r: Any, *, limit: int = 100) -> list[str]:
    return list(r.zrangebyscore(WEBHOOKS_DUE, "-inf", time.time(), start=0, num=limit))


# -- fleet-wide counters -------------------------------------------------------------
def count_webhook(r: Any, outcome: str) -> None:
    try:
        r.hincrby(WEBHOOK_COUNTERS, outcome, 1)
    except Exception as exc:
        log.warning("webhook counter not written: %s", type(exc).__name__)


def count_sweep(r: Any, *, missing: int) -> None:
    """One lost-message sweep done (and how many messages it found missing)."""
    with r.pipeline(transaction=False) as pipe:
        pipe.hincrby(REAPER_COUNTERS, "sweeps", 1)
        pipe.hincrby(REAPER_COUNTERS, "missing", missing)
        pipe.execute()


def sweeps(r: Any) -> int:
    """Lost-message sweeps done, fleet-wide."""
    return int(r.hget(REAPER_COUNTERS, "sweeps") or 0)


def job_counts(r: Any) -> dict[tuple[str, str], int]:
    """``{(model, status): jobs ended}`` for the whole fleet."""
    out = {}
    for key, value in (r.hgetall(JOB_COUNTERS) or {}).items():
        model, _, status = key.partition("|")
        out[(model, status)] = int(value)
    return out


def webhook_counts(r: Any) -> dict[str, int]:
    return {k: int(v) for k, v in (r.hgetall(WEBHOOK_COUNTERS) or {}).items()}
