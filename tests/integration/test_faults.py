"""Every part fails, nothing is lost: faults injected by stopping real processes.

One stack of its own (Valkey with an append-only file, as production runs it; an S3
server; the API with an API key; two tiny-sd workers; the webhooks worker), on the
production visibility timeout. Each test injects one fault, waits no longer than the
fault lasts, and puts the stack back as it found it.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from PIL import Image

from app.auth import hash_key
from harness.http import TERMINAL, KilnHTTP
from harness.stack import Proc, Stack, wait_for
from harness.webhooks import Receiver
from tasks.jobs import bookkeeping as bk
from tasks.jobs.store import JobStore
from tasks.messaging.names import queue_for

KEY = "kiln_fault-test-key"
OWNER = "ops"
WAIT_S = 240
# Slow enough that a batch is still on the device when its worker is killed.
SLOW = dict(model="tiny-sd", width=64, height=64, steps=30)


@pytest.fixture(scope="module")
def fstack(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("faults"),
        models_dir=tiny_models_dir,
        persist=True,
        env_overrides={
            "KILN_AUTH": "on",
            "KILN_API_KEYS": f"{OWNER}:{hash_key(KEY)}:generate+read",
            "KILN_WEBHOOK_ALLOW_PRIVATE": "true",
            "KILN_WEBHOOK_TIMEOUT_S": "2",
            "KILN_WEBHOOK_BACKOFF_S": "0.2",
            "KILN_LOST_MESSAGE_SWEEP_S": "2",
        },
    )
    try:
        s.start_servers()
        s.start_fleet("tiny-sd", workers=2)
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def fapi(fstack: Stack) -> KilnHTTP:
    return KilnHTTP(fstack.api_url, headers={"Authorization": f"Bearer {KEY}"})


@pytest.fixture(scope="module")
def store(fstack: Stack) -> JobStore:
    return JobStore(fstack.env["KILN_REDIS_URL"])


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


def events(store: JobStore, job_id: str) -> list[tuple[float, str, dict]]:
    """The job's events with their time (the stream id's milliseconds, server clock)."""
    return [(int(eid.split("-")[0]) / 1000, kind, data) for eid, kind, data in store.events(job_id)]


def assert_each_succeeded_once(fstack: Stack, store: JobStore, done: list[dict]) -> None:
    for d in done:
        assert d["status"] == "succeeded", (d["id"], d["error"])
        assert [k for _, k, _ in events(store, d["id"])].count("succeeded") == 1
        assert fstack.objects(f"generated/{d['id']}/") == [f"generated/{d['id']}/0.png"]


def wait_all(fstack: Stack, fapi: KilnHTTP, store: JobStore, jobs: list[dict]) -> list[dict]:
    """Each job's end; one that does not end in time fails the test with its whole story."""
    deadline = time.monotonic() + WAIT_S - 60  # inside pytest's own timeout, to tell why
    done: dict[str, dict] = {}
    while time.monotonic() < deadline and len(done) < len(jobs):
        for j in jobs:
            if j["id"] not in done:
                job = fapi.get(f"/v1/jobs/{j['id']}").json()
                if job["status"] in TERMINAL:
                    done[j["id"]] = job
        time.sleep(0.1)
    if len(done) < len(jobs):
        r = store.redis
        story = []
        for j in jobs:
            if j["id"] in done:
                continue
            rec = store.get(j["id"]) or {}
            unacked = [v for v in r.hvals("unacked") if j["id"] in str(v)]
            queued = [m for m in r.lrange(queue_for("tiny-sd"), 0, -1) if j["id"] in str(m)]
            kinds = [k for _, k, _ in events(store, j["id"])]
            story.append(
                f"{j['id']}: {rec.get('status')} worker={rec.get('worker')} "
                f"attempts={rec.get('attempts')} events={kinds} "
                f"held={bk.held_jobs(r, 'tiny-sd').get(j['id'])} "
                f"in_queue={len(queued)} unacked={len(unacked)}"
            )
        logs = "\n".join(
            f"--- {p.name} ---\n{p.output()[-3000:]}" for p in fstack.procs if p.name[0] == "w"
        )
        raise AssertionError("jobs that did not end:\n" + "\n".join(story) + "\n" + logs)
    return [done[j["id"]] for j in jobs]


def ensure_workers(fstack: Stack) -> None:
    """Two tiny-sd workers and the webhooks worker, as the module started them."""
    for name in ("w1", "w2", "webhooks"):
        proc = fstack.proc(name)
        if proc.popen.poll() is not None:
            fstack.restart(proc)
    wait_for(lambda: fstack.ready_workers("tiny-sd") >= 2, timeout=WAIT_S, what="two workers")


def worker_proc(fstack: Stack, worker: str) -> Proc:
    """The process behind a worker name (``tiny-sd@cpu.<pid>@host``)."""
    pid = int(worker.split("@")[1].split(".")[1])
    return next(p for p in fstack.procs if p.popen.pid == pid)


def test_sigkill_mid_batch_resends_each_job_within_15s_and_it_succeeds_once(
    fstack: Stack, fapi: KilnHTTP, store: JobStore
) -> None:
    jobs = [fapi.submit(prompt=f"survivor {i}", seed=i, **SLOW) for i in range(4)]
    victim: dict = {}

    def one_mid_batch() -> bool:
        for j in jobs:
            rec = store.get(j["id"]) or {}
            if rec.get("status") == "running" and (rec.get("progress") or {}).get("step", 0) >= 1:
                victim.update(rec)
                return True
        return False

    wait_for(one_mid_batch, timeout=WAIT_S, what="a job mid-batch")
    dead = victim["worker"]
    on_dead = {j["id"] for j in jobs if (store.get(j["id"]) or {}).get("worker") == dead}
    worker_proc(fstack, dead).kill()
    killed_at = time.time()
    try:
        done = [fapi.wait(j["id"], timeout=WAIT_S) for j in jobs]
        assert_each_succeeded_once(fstack, store, done)
        resent_after = []
        for job_id in on_dead:
            requeued = [t for t, kind, _ in events(store, job_id) if kind == "requeued"]
            assert len(requeued) == 1, events(store, job_id)
            resent_after.append(requeued[0] - killed_at)
        print(f"killed {dead}: {len(on_dead)} job(s) re-sent after {max(resent_after):.1f}s")
        # The bound: heartbeat TTL (6 s) + reaper period (2 s), with slack for a loaded box.
        assert max(resent_after) <= 15
        assert {d["attempts"] for d in done if d["id"] in on_dead} == {2}
    finally:
        ensure_workers(fstack)


def test_a_job_store_and_broker_outage_delays_jobs_and_loses_none(
    fstack: Stack, fapi: KilnHTTP, store: JobStore
) -> None:
    outage_s = 10  # past the heartbeat TTL (6 s): every worker's heartbeat lapses
    jobs = [fapi.submit(prompt=f"outage {i}", model="tiny-sd", steps=20, seed=i) for i in range(8)]
    wait_for(
        lambda: any((store.get(j["id"]) or {}).get("status") != "queued" for j in jobs),
        timeout=WAIT_S,
        what="the burst under way",
    )
    valkey = fstack.proc("valkey")
    valkey.stop()  # SIGTERM: the append-only file is flushed, as on a clean restart
    stopped_at = time.monotonic()
    try:
        refused = fapi.post("/v1/jobs", json={"prompt": "during", "model": "tiny-sd"})
        assert refused.status_code == 503 and refused.headers["Retry-After"], refused.text
        assert fapi.get(f"/v1/jobs/{jobs[0]['id']}").status_code == 503
        time.sleep(max(0.0, outage_s - (time.monotonic() - stopped_at)))
    finally:
        fstack.restart(valkey)
        wait_for(lambda: store.redis.ping(), timeout=30, what="valkey back")
    done = wait_all(fstack, fapi, store, jobs)
    assert_each_succeeded_once(fstack, store, done)
    ensure_workers(fstack)


def test_a_job_whose_message_the_broker_lost_is_sent_again(
    fstack: Stack, fapi: KilnHTTP, store: JobStore
) -> None:
    """What a Redis broker stopped between a worker's BRPOP and kombu's note of the
    delivery leaves: a queued job with no message anywhere. (``sd15`` has no worker in
    this stack, so its message waits on the queue until the test takes it away.)"""
    broker = redis.Redis.from_url(fstack.env["KILN_BROKER_URL"])
    queue = queue_for("sd15")
    job = fapi.submit(prompt="lost", model="sd15", steps=2)
    wait_for(lambda: broker.llen(queue) == 1, timeout=10, what="its message on the queue")
    broker.delete(queue)
    try:
        wait_for(
            lambda: "resent" in [k for _, k, _ in events(store, job["id"])],
            timeout=30,
            what="the job sent again",
        )
        # The reaper notes the event, then sends: the message follows a moment later.
        wait_for(lambda: broker.llen(queue) == 1, timeout=10, what="the message sent again")
        (raw,) = broker.lrange(queue, 0, -1)
        assert json.loads(raw)["headers"]["id"] == job["id"]
        assert fapi.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
        # Two more sweeps find its message there: it is not sent twice.
        swept = bk.sweeps(store.redis)
        wait_for(lambda: bk.sweeps(store.redis) >= swept + 2, timeout=30, what="two sweeps")
        assert broker.llen(queue) == 1
    finally:
        assert fapi.delete(f"/v1/jobs/{job['id']}").status_code in (200, 202)
        broker.delete(queue)


def test_s3_down_while_the_api_stores_an_input_is_a_503_and_the_same_key_works_after(
    fstack: Stack, fapi: KilnHTTP, store: JobStore
) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buf, "PNG")
    image = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    body = {"prompt": "red", "model": "tiny-sd", "steps": 2, "image": image}
    headers = {"Idempotency-Key": "s3-down-input"}
    before = bk.active_jobs(store.redis, OWNER)
    s3 = fstack.proc("s3")
    s3.stop()
    try:
        r = fapi.post("/v1/jobs", json=body, headers=headers)
        assert r.status_code == 503 and r.headers["Retry-After"], r.text
        assert bk.active_jobs(store.redis, OWNER) == before  # no record, no slot taken
    finally:
        fstack.restart(s3)
    wait_for(lambda: fstack.objects("inputs/") is not None, timeout=30, what="s3 back")
    r = fapi.post("/v1/jobs", json=body, headers=headers)
    assert r.status_code == 202, r.text
    done = fapi.wait(r.json()["id"], timeout=WAIT_S)
    assert done["status"] == "succeeded" and done["params"]["mode"] == "img2img", done


def test_an_s3_outage_delays_uploads_and_every_job_succeeds(
    fstack: Stack, fapi: KilnHTTP, store: JobStore
) -> None:
    s3 = fstack.proc("s3")
    s3.stop()
    try:
        jobs = [
            fapi.submit(prompt=f"no s3 {i}", model="tiny-sd", steps=4, seed=i) for i in range(6)
        ]
        # Down until an upload has waited three times (0.5, 1 and 2 s: outages.py).
        wait_for(
            lambda: [k for _, k, _ in events(store, jobs[0]["id"])].count("retrying") >= 3,
            timeout=60,
            what="an upload waiting for S3 three times",
        )
    finally:
        fstack.restart(s3)
    done = [fapi.wait(j["id"], timeout=WAIT_S) for j in jobs]
    assert_each_succeeded_once(fstack, store, done)
    waits = [d for _, k, d in events(store, jobs[0]["id"]) if k == "retrying"]
    assert len(waits) >= 3 and {d["reason"] for d in waits} == {"storage_unavailable"}
    assert all(d["attempts"] == 1 for d in done)  # the same delivery waited: no re-run


def test_a_broker_refusing_submits_answers_503_and_costs_the_key_no_slot(
    fstack: Stack, store: JobStore
) -> None:
    dead_broker = f"redis://127.0.0.1:{_closed_port()}/0"
    url = fstack.start_api(env={"KILN_BROKER_URL": dead_broker})
    api = KilnHTTP(url, headers={"Authorization": f"Bearer {KEY}"})
    before = bk.active_jobs(store.redis, OWNER)
    r = api.post("/v1/jobs", json={"prompt": "no broker", "model": "tiny-sd"})
    assert r.status_code == 503 and r.headers["Retry-After"], r.text
    assert r.json()["error"]["code"] == "broker_unavailable"
    assert bk.active_jobs(store.redis, OWNER) == before


def test_a_webhooks_worker_killed_mid_delivery_delivers_after_with_the_same_id(
    fstack: Stack, fapi: KilnHTTP, store: JobStore, receiver: Receiver
) -> None:
    job = fapi.submit(
        prompt="hook", model="tiny-sd", steps=2, seed=5, webhook_url=receiver.url + "/hold"
    )
    assert receiver.held.wait(WAIT_S), "the webhook never reached the receiver"
    fstack.proc("webhooks").kill()
    receiver.release()
    try:
        fstack.restart(fstack.proc("webhooks"))

        def delivered() -> bool:
            return ((store.get(job["id"]) or {}).get("webhook") or {}).get("state") == "delivered"

        wait_for(delivered, timeout=WAIT_S, what="the webhook delivered after the kill")
    finally:
        ensure_workers(fstack)
    hits = receiver.hits["/hold"]
    assert len(hits) >= 2
    assert len({h["webhook-id"] for _, h, _ in hits}) == 1  # the same message, again


def test_a_job_canceled_while_queued_sends_its_canceled_webhook(
    fstack: Stack, fapi: KilnHTTP, receiver: Receiver
) -> None:
    # No sd15 worker in this stack: the job stays queued until it is canceled.
    job = fapi.submit(prompt="never runs", model="sd15", webhook_url=receiver.url + "/ok")
    assert fapi.delete(f"/v1/jobs/{job['id']}").status_code == 200
    wait_for(
        lambda: any(job["id"].encode() in body for _, _, body in receiver.hits.get("/ok", [])),
        timeout=WAIT_S,
        what="the canceled webhook",
    )
    body = next(b for _, _, b in receiver.hits["/ok"] if job["id"].encode() in b)
    assert b'"type":"job.canceled"' in body


def _closed_port() -> int:
    from harness.stack import free_port

    return free_port()  # nothing listens there: a broker that refuses every connection
