"""Redis bookkeeping, the job store's scripts and the worker heartbeat, on the session's
own Valkey (``redis_url``: a flushed database of it)."""

from __future__ import annotations

import json
import time

import pytest
import redis

from config.settings import from_env
from tasks.jobs import bookkeeping as bk
from tasks.jobs.ends import end_job
from tasks.jobs.store import JobStore, events_key, job_key
from tasks.worker import runtime as rt
from tasks.worker.progress import ProgressWriter


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def test_queue_position_and_eta(r: redis.Redis) -> None:
    m = "m"
    for i, job in enumerate(["a", "b", "c"]):
        bk.mark_queued(r, m, job, 100.0 + i)
    assert [bk.waiting(r, m, j)[0] for j in "abc"] == [1, 2, 3]
    bk.mark_dequeued(r, m, "a")
    assert bk.waiting(r, m, "c")[0] == 2 and bk.waiting(r, m, "a")[0] is None
    assert bk.eta_s(position=2, images=1, workers=1, s_per_image=1.0) == 2.0
    assert bk.waiting(r, m, "c") == (2, None, 0)  # no rate measured, no worker
    bk.record_batch(r, m, seconds=4.0, images=4)  # 1 s per image measured
    bk.record_batch(r, m, seconds=2.0, images=4)  # 0.5 s → moving average 0.85
    _, rate, _ = bk.waiting(r, m, "c")
    assert rate == pytest.approx(0.85)
    assert bk.eta_s(position=2, images=1, workers=2, s_per_image=0.85) == pytest.approx(0.85)


def test_a_job_read_as_queued_just_before_its_batch_began_is_shown_running(
    redis_url: str,
) -> None:
    """The record and the queue are two reads: a job whose batch begins between them is
    not shown as queued with no place and no ETA, but as it is now."""
    from tasks.jobs.records import new_record
    from tasks.jobs.service import JobService

    service = JobService(from_env({"KILN_REDIS_URL": redis_url, "KILN_PROFILE": "test"}))
    params = service.validate({"prompt": "x", "model": "tiny-sd", "steps": 4, "seed": 1})
    worker = "tiny-sd@cpu.1@host"
    record = {**new_record("j1", params), "status": "queued", "worker": worker}  # received
    service.store.create(record)
    bk.mark_queued(service.store.redis, "tiny-sd", "j1", time.time())
    assert service.view(dict(record))["queue_position"] == 1
    assert service.store.start("j1", model="tiny-sd", worker=worker)

    seen = service.view(dict(record))  # the record as read before the start
    assert seen["status"] == "running" and seen["queue_position"] is None
    assert seen["eta_s"] is not None and seen["eta_s"] > 0


def test_live_event_reads_block_past_the_default_socket_timeout(redis_url: str) -> None:
    """redis-py reads time out after 5 s by default; an idle event stream must not."""
    store = JobStore(redis_url)
    t0 = time.monotonic()
    assert store.events("no-such-job", block_ms=6000) == []
    assert time.monotonic() - t0 >= 5.9


def test_progress_of_every_running_job_in_one_flush(redis_url: str) -> None:
    """The progress writer's flush: running jobs get the step and an event; others not."""
    store = JobStore(redis_url, ttl_s=60)
    ids = [f"p-{i}" for i in range(3)]
    for job_id, status in zip(ids, ("running", "running", "succeeded"), strict=True):
        store.create({"id": job_id, "status": status, "created_at": 1.0})
    writer = ProgressWriter(store, model="m")
    for job_id in ids:
        writer.update(job_id, 3, 8)
        writer.running(job_id)
    writer.update(ids[0], 4, 8)  # only the latest step of a job is written
    writer.flush()
    got = [store.get(j) or {} for j in ids]
    assert [g.get("progress") for g in got] == [
        {"step": 4, "steps": 8},
        {"step": 3, "steps": 8},
        None,
    ]
    assert [e[1] for e in store.events(ids[0])] == ["queued", "progress"]
    assert [e[1] for e in store.events(ids[2])] == ["queued"]  # finished: left alone
    writer.flush()  # nothing new: no writes
    assert len(store.events(ids[0])) == 2


def test_progress_waits_until_the_job_is_marked_running(redis_url: str) -> None:
    """A step reported before the task thread marked its job running is kept, then
    written (with the seconds left) once it is."""
    store = JobStore(redis_url, ttl_s=60)
    store.create({"id": "w-1", "status": "running", "created_at": 1.0})
    writer = ProgressWriter(store, model="m")
    writer.update("w-1", 1, 8, eta_s=2.5)
    writer.flush()
    assert store.get("w-1").get("progress") is None  # type: ignore[union-attr]
    writer.running("w-1")
    writer.flush()
    assert (store.get("w-1") or {})["progress"] == {"step": 1, "steps": 8, "eta_s": 2.5}


def test_a_batch_s_starts_and_first_steps_are_written_in_one_flush(redis_url: str) -> None:
    """The jobs of a batch that began turn running together (with the time it began and
    their first step); a job another worker took meanwhile is not started here."""
    store = JobStore(redis_url, ttl_s=60)
    for job_id in ("s1", "s2", "s3"):
        store.create({"id": job_id, "status": "queued", "model": "m", "created_at": 1.0})
        store.receive(job_id, model="m", worker="w", attempt=1)
    store.receive("s3", model="m", worker="other", attempt=2)  # sent again, taken there
    writer = ProgressWriter(store, model="m", worker="w")
    starts = {j: writer.job_started(j, 42.0) for j in ("s1", "s2", "s3")}
    for job_id in starts:
        writer.update(job_id, 1, 4, eta_s=0.3)
    writer.flush()
    assert all(s.written.is_set() for s in starts.values())
    assert {j: s.applied for j, s in starts.items()} == {"s1": True, "s2": True, "s3": False}
    got = {j: store.get(j) or {} for j in starts}
    assert [got[j]["status"] for j in ("s1", "s2", "s3")] == ["running", "running", "queued"]
    assert got["s1"]["started_at"] == got["s2"]["started_at"] == 42.0
    assert got["s1"]["progress"] == {"step": 1, "steps": 4, "eta_s": 0.3}
    assert got["s3"].get("started_at") is None and got["s3"]["worker"] == "other"
    writer.update("s1", 2, 4)
    writer.flush()  # started: its steps go on being written
    assert (store.get("s1") or {})["progress"] == {"step": 2, "steps": 4}


def test_a_received_job_waits_in_its_place_until_its_batch_starts(
    r: redis.Redis, redis_url: str
) -> None:
    """Received by a worker, a job stays queued, keeps its queue place (positions count
    jobs waiting inside workers) and is held for the reaper; it runs only when its
    batch starts, on the worker that holds it."""
    store = JobStore(redis_url, ttl_s=60)
    for i, job_id in enumerate("abc"):
        at = 10.0 + i
        record = {"id": job_id, "status": "queued", "model": "m", "created_at": at}
        store.create(record, also=lambda pipe, j=job_id, at=at: bk.mark_queued(pipe, "m", j, at))
    assert store.receive("b", model="m", worker="w1", attempt=1)
    assert (store.get("b") or {})["status"] == "queued"
    assert [bk.waiting(r, "m", j)[0] for j in "abc"] == [1, 2, 3]
    assert bk.held_jobs(r, "m") == {"b": "w1"}
    assert not store.start("b", model="m", worker="w2", at=20.0)  # not the holder
    assert store.start("b", model="m", worker="w1", at=20.0)
    b = store.get("b") or {}
    assert (b["status"], b["started_at"], b["worker"]) == ("running", 20.0, "w1")
    assert [bk.waiting(r, "m", j)[0] for j in "abc"] == [1, None, 2]
    assert [e[1] for e in store.events("b")] == ["queued", "received", "started"]
    assert not store.start("b", model="m", worker="w1", at=21.0)  # once


def test_a_dead_worker_s_waiting_job_is_requeued_and_a_stale_entry_spares_the_new_holder(
    r: redis.Redis, redis_url: str
) -> None:
    store = JobStore(redis_url, ttl_s=60)
    store.create(
        {"id": "q1", "status": "queued", "model": "m", "created_at": 5.0},
        also=lambda pipe: bk.mark_queued(pipe, "m", "q1", 5.0),
    )
    assert store.receive("q1", model="m", worker="dead", attempt=1)
    assert store.requeue("q1", model="m", dead_worker="dead", score=5.0)
    assert bk.held_jobs(r, "m") == {} and bk.waiting(r, "m", "q1")[0] == 1
    assert [e[1] for e in store.events("q1")][-1] == "requeued"
    assert store.receive("q1", model="m", worker="alive", attempt=2)
    # a reaper that read the held set before: the job is not the dead worker's any more
    assert not store.requeue("q1", model="m", dead_worker="dead", score=5.0)
    assert bk.held_jobs(r, "m") == {"q1": "alive"}
    q1 = store.get("q1") or {}
    assert (q1["status"], q1["worker"], q1["attempts"]) == ("queued", "alive", 2)
    # a job that was running on a dead worker, re-delivered before the reaper saw it,
    # waits again (not running) on the worker that took it
    assert store.start("q1", model="m", worker="alive", at=6.0)
    assert store.receive("q1", model="m", worker="next", attempt=3)
    q1 = store.get("q1") or {}
    assert (q1["status"], q1["started_at"], q1["worker"]) == ("queued", None, "next")
    assert bk.waiting(r, "m", "q1")[0] == 1
    end_job(store, None, "q1", "canceled", allowed_from=("queued",))
    assert not store.receive("q1", model="m", worker="next", attempt=4)  # ended: stays so
    assert bk.held_jobs(r, "m") == {} and bk.depth(r, "m") == 0


def test_the_end_script_moves_the_record_and_clears_all_bookkeeping(
    r: redis.Redis, redis_url: str
) -> None:
    store = JobStore(redis_url, ttl_s=60)
    record = {"id": "e1", "status": "queued", "model": "m", "owner": "alice", "created_at": 1.0}

    def bookkeeping(pipe: object) -> None:
        bk.mark_queued(pipe, "m", "e1", 1.0)
        bk.mark_active(pipe, "alice", "e1", ttl_s=60)

    store.create(record, also=bookkeeping)
    assert bk.depth(r, "m") == 1 and bk.active_jobs(r, "alice") == 1
    ended = end_job(store, None, "e1", "canceled", allowed_from=("queued",), error={"code": "x"})
    assert ended is not None and ended["status"] == "canceled" and ended["completed_at"]
    assert bk.depth(r, "m") == 0 and bk.active_jobs(r, "alice") == 0
    assert bk.job_counts(r) == {("m", "canceled"): 1}
    assert [e[1] for e in store.events("e1")] == ["queued", "canceled"]
    # An ended job never ends again: no second event, no second count.
    assert end_job(store, None, "e1", "succeeded") is None
    assert store.get("e1")["status"] == "canceled"  # type: ignore[index]
    assert bk.job_counts(r) == {("m", "canceled"): 1}
    assert len(store.events("e1")) == 2
    assert 0 < r.ttl(job_key("e1")) <= 60 and 0 < r.ttl(events_key("e1")) <= 60


def test_heartbeat_is_removed_at_once_and_not_written_again(redis_url: str) -> None:
    settings = from_env({"KILN_REDIS_URL": redis_url, "KILN_BROKER_URL": redis_url})
    runtime = rt.build(settings, "tiny-sd", hostname="unit-beat")
    r = runtime.store.redis
    key = bk.alive_key("tiny-sd", runtime.hostname)
    beat = runtime.start_heartbeat()
    deadline = time.monotonic() + 10
    while not r.exists(key) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r.exists(key) and 0 < r.ttl(key) <= rt.HEARTBEAT_TTL_S
    assert bk.ready_workers(r, "tiny-sd") == 1
    runtime.stop_heartbeat()
    assert not r.exists(key)
    assert bk.ready_workers(r, "tiny-sd") == 0
    beat.join(rt.HEARTBEAT_S + 5)
    assert not beat.is_alive()
    assert not r.exists(key)  # the beat thread did not put it back


def test_ready_workers_report_the_dtype_they_run(r: redis.Redis) -> None:
    bk.beat(r, "m", "w1", 60, dtype="fp32")
    bk.beat(r, "m", "w2", 60, dtype="fp32")
    bk.beat(r, "m", "w3", 60, dtype="fp16")
    bk.beat(r, "m", "w4", 60)  # still loading: no dtype to say yet
    bk.beat(r, "m", "w5", 60, ready=False, dtype="bf16")  # draining: not ready
    assert bk.worker_dtypes(r, "m") == {"fp32": 2, "fp16": 1}
    assert bk.ready_workers(r, "m") == 4
    bk.unbeat(r, "m", "w3")
    assert bk.worker_dtypes(r, "m") == {"fp32": 2}
    assert bk.worker_dtypes(r, "other") == {}


def test_a_keys_job_index_is_bounded_by_the_store(r: redis.Redis, redis_url: str) -> None:
    from tasks.jobs.listing import list_jobs

    store = JobStore(redis_url, ttl_s=60)
    t = time.time()
    for i, job_id in enumerate(["old", "a", "b", "c"]):
        created = t - 10_000_000 if job_id == "old" else t + i
        store.create({"id": job_id, "status": "queued", "model": "m", "created_at": created})
        bk.mark_owned(r, "alice", job_id, created, ttl_s=60)
    store.create({"id": "d", "status": "queued", "model": "m", "created_at": t})
    bk.mark_owned(r, "bob", "d", t, ttl_s=60)
    # Entries older than any record the store can still hold are trimmed at each submit,
    # and the index expires with its newest job (plus the slack for running ones).
    assert r.zrange(bk.owned_key("alice"), 0, -1) == ["a", "b", "c"]
    assert 0 < r.ttl(bk.owned_key("alice")) <= 60 + bk.OWNED_KEEP_S
    # A record that expired leaves the index when a listing meets it.
    r.delete(job_key("b"))
    page = list_jobs(store, "alice", limit=1)
    assert [j["id"] for j in page.jobs] == ["c"] and page.has_more
    page = list_jobs(store, "alice", limit=5, after="c")
    assert [j["id"] for j in page.jobs] == ["a"] and not page.has_more
    assert r.zrange(bk.owned_key("alice"), 0, -1) == ["a", "c"]
    assert [j["id"] for j in list_jobs(store, "bob").jobs] == ["d"]
    assert list_jobs(store, None).jobs == []  # jobs made without a key are indexed apart


def test_a_message_lost_or_left_unacked_is_unheard_and_one_waiting_is_not(redis_url: str) -> None:
    """``tasks.messaging.lost.unheard`` on a real Redis broker: a job whose message waits
    on its queue, or was delivered a moment ago, is heard; one whose message is nowhere,
    or was delivered long ago and never taken, is not."""
    from tasks.messaging.app import make_celery
    from tasks.messaging.lost import unheard

    celery = make_celery(from_env({"KILN_BROKER_URL": redis_url, "KILN_REDIS_URL": redis_url}))
    queue = "gen.lost-test"
    for job_id in ("waiting", "fresh", "stale"):
        celery.send_task("kiln.generate", kwargs={}, task_id=job_id, queue=queue)
    broker = redis.Redis.from_url(redis_url)
    for raw in broker.lrange(queue, 0, -1):  # as kombu's QoS notes a delivery
        message = json.loads(raw)
        age_s = {"fresh": 1, "stale": 120}.get(message["headers"]["id"])
        if age_s is not None:
            tag = message["properties"]["delivery_tag"]
            broker.lrem(queue, 1, raw)
            broker.hset("unacked", tag, json.dumps([message, "", queue]))
            broker.zadd("unacked_index", {tag: time.time() - age_s})
    ids = ["waiting", "fresh", "stale", "gone"]
    assert unheard(celery, queue, ids, stale_s=30) == {"stale", "gone"}
