"""Queue position and ETA, for every broker alike.

The API adds each job to ``kiln:queued:<model>`` (a sorted set by submit time) and the
worker removes it when the job starts or ends, so a waiting job's position is its
rank there. Workers publish a moving average of seconds per image per model in
``kiln:stats:<model>``, and each worker's heartbeat keeps its expiry time (the
server's clock) in ``kiln:workers:<model>``; the ETA divides the work ahead by the
ready workers. A waiting job's position, rate and workers are read in one round trip.
"""

from __future__ import annotations

from typing import Any

EMA_ALPHA = 0.3
CANCEL_CHANNEL = "kiln:cancel"


def queued_key(model: str) -> str:
    return f"kiln:queued:{model}"


def stats_key(model: str) -> str:
    return f"kiln:stats:{model}"


def mark_queued(r: Any, model: str, job_id: str, created_at: float) -> None:
    r.zadd(queued_key(model), {job_id: created_at})


def mark_dequeued(r: Any, model: str, job_id: str) -> None:
    r.zrem(queued_key(model), job_id)


def position(r: Any, model: str, job_id: str) -> int | None:
    """1 for the next job to start; None when the job is not waiting."""
    rank = r.zrank(queued_key(model), job_id)
    return None if rank is None else int(rank) + 1


def depth(r: Any, model: str) -> int:
    return int(r.zcard(queued_key(model)))


def record_batch(r: Any, model: str, *, seconds: float, images: int) -> None:
    """Fold one pipeline call into the moving average of seconds per image."""
    if images <= 0:
        return
    sample = seconds / images
    old = r.hget(stats_key(model), "s_per_image")
    value = sample if old is None else (1 - EMA_ALPHA) * float(old) + EMA_ALPHA * sample
    r.hset(stats_key(model), mapping={"s_per_image": f"{value:.6f}"})


def eta_s(*, position: int, images: int, workers: int, s_per_image: float) -> float:
    """Seconds until a waiting job is done: jobs ahead (one image each) plus its own."""
    return round(max(s_per_image, (position - 1 + images) * s_per_image / max(1, workers)), 2)


def workers_key(model: str) -> str:
    return f"kiln:workers:{model}"


# KEYS[1] the model's worker set: hosts whose heartbeat has not expired (server clock).
READY_COUNT = "return redis.call('ZCOUNT', KEYS[1], '(' .. redis.call('TIME')[1], '+inf')"


def ready_workers(r: Any, model: str) -> int:
    """Workers of ``model`` whose heartbeat has not expired."""
    return int(r.eval(READY_COUNT, 1, workers_key(model)))


def waiting(r: Any, model: str, job_id: str) -> tuple[int | None, float | None, int]:
    """``(position, seconds per image or None, ready workers)`` in one round trip."""
    with r.pipeline(transaction=False) as pipe:
        pipe.zrank(queued_key(model), job_id)
        pipe.hget(stats_key(model), "s_per_image")
        pipe.eval(READY_COUNT, 1, workers_key(model))  # EVALSHA would add a SCRIPT EXISTS
        rank, rate, workers = pipe.execute()
    return (
        None if rank is None else int(rank) + 1,
        None if rate is None else float(rate),
        int(workers),
    )


def active_key(owner: str) -> str:
    return f"kiln:active:{owner}"


def mark_active(r: Any, owner: str | None, job_id: str) -> None:
    if owner:
        r.sadd(active_key(owner), job_id)


def mark_inactive(r: Any, owner: str | None, job_id: str) -> None:
    if owner:
        r.srem(active_key(owner), job_id)


def active_jobs(r: Any, owner: str | None) -> int:
    return int(r.scard(active_key(owner))) if owner else 0
