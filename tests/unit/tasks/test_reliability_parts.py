"""Pure parts of the reliability story: signing, backoff, URL guard, limits, ETA."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import threading
from datetime import UTC, datetime

import pytest
import redis
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from config.errors import Canceled, InvalidInput, TimeLimitExceeded
from config.settings import from_env
from tasks import queues
from tasks.celery_app import make_celery, visibility_timeout
from tasks.limits import Wedged, wait_result
from tasks.urlsafety import check_webhook_url
from tasks.webhooks import backoff_s, sign

SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()


def test_signature_verifies_with_the_standardwebhooks_library() -> None:
    body = json.dumps({"type": "job.succeeded", "data": {"id": "j1"}})
    headers = sign(SECRET, "msg_j1_succeeded", datetime.now(UTC), body)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(body, headers)["data"]["id"] == "j1"
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace("j1", "j2"), headers)
    other = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)


def test_backoff_doubles_with_jitter_and_a_cap() -> None:
    for attempt in range(1, 8):
        top = min(300.0, 2.0 * 2 ** (attempt - 1))
        samples = [backoff_s(attempt, base=2.0) for _ in range(50)]
        assert all(top / 2 <= s <= top for s in samples)
        assert len(set(samples)) > 1  # jitter
    assert backoff_s(30, base=2.0) <= 300.0


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/",
        "http://127.0.0.1:9/hook",
        "http://10.1.2.3/",
        "http://[::1]/",
        "http://localhost/x",
        "http://0.0.0.0/",
        "http://[::ffff:192.168.1.1]/",
        "ftp://example.com/",
        "not a url",
    ],
)
def test_private_or_odd_webhook_targets_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput) as err:
        check_webhook_url(url, allow_private=False)
    assert "webhook_url" in err.value.fields


def test_private_targets_pass_when_allowed_and_public_ones_always() -> None:
    check_webhook_url("http://127.0.0.1:9/hook", allow_private=True)
    check_webhook_url("https://93.184.215.14/hook", allow_private=False)


def test_visibility_timeout_stays_above_the_longest_hard_limit() -> None:
    settings = from_env({})
    assert visibility_timeout(settings, 360) == 720
    assert visibility_timeout(settings, 100) == 600
    assert visibility_timeout(from_env({"KILN_VISIBILITY_TIMEOUT_S": "45"}), 360) == 45
    conf = make_celery(settings, longest_time_limit_s=900).conf
    assert conf.broker_transport_options["visibility_timeout"] == 1800
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1 and conf.accept_content == ["json"]


def test_a_future_in_time_is_returned() -> None:
    fut: concurrent.futures.Future = concurrent.futures.Future()
    fut.set_result("images")
    assert wait_result(fut, threading.Event(), soft_s=1, hard_s=2) == "images"


def test_soft_limit_cancels_and_fails_the_job() -> None:
    fut: concurrent.futures.Future = concurrent.futures.Future()
    cancel = threading.Event()

    def engine() -> None:  # drops the job at its next step once canceled
        cancel.wait(5)
        fut.set_exception(Canceled("canceled at step 3"))

    threading.Thread(target=engine, daemon=True).start()
    with pytest.raises(TimeLimitExceeded) as err:
        wait_result(fut, cancel, soft_s=0.05, hard_s=5)
    assert cancel.is_set() and not isinstance(err.value, Wedged)
    assert err.value.code == "time_limit_exceeded"


def test_hard_limit_reports_a_wedged_engine() -> None:
    fut: concurrent.futures.Future = concurrent.futures.Future()  # never resolves
    cancel = threading.Event()
    with pytest.raises(Wedged):
        wait_result(fut, cancel, soft_s=0.02, hard_s=0.05)
    assert cancel.is_set()


@pytest.fixture
def r() -> object:
    """The machine's Redis (127.0.0.1:6379), under keys of a model no one else uses."""
    client = redis.Redis(decode_responses=True, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    yield client
    client.delete(queues.queued_key("m-" + MODEL), queues.stats_key("m-" + MODEL))


MODEL = os.urandom(4).hex()


def test_queue_position_and_eta(r: redis.Redis) -> None:
    m = "m-" + MODEL
    for i, job in enumerate(["a", "b", "c"]):
        queues.mark_queued(r, m, job, 100.0 + i)
    assert [queues.position(r, m, j) for j in "abc"] == [1, 2, 3]
    queues.mark_dequeued(r, m, "a")
    assert queues.position(r, m, "c") == 2 and queues.position(r, m, "a") is None
    assert queues.eta_s(position=2, images=1, workers=1, s_per_image=1.0) == 2.0
    assert queues.waiting(r, m, "c") == (2, None, 0)  # no rate measured, no worker
    queues.record_batch(r, m, seconds=4.0, images=4)  # 1 s per image measured
    queues.record_batch(r, m, seconds=2.0, images=4)  # 0.5 s → moving average 0.85
    _, rate, _ = queues.waiting(r, m, "c")
    assert rate == pytest.approx(0.85)
    assert queues.eta_s(position=2, images=1, workers=2, s_per_image=0.85) == pytest.approx(0.85)


def test_live_event_reads_block_past_the_default_socket_timeout(r: redis.Redis) -> None:
    """redis-py reads time out after 5 s by default; an idle event stream must not."""
    from tasks.jobs import JobStore

    store = JobStore("redis://127.0.0.1:6379/0")
    assert store.events("no-such-job-" + MODEL, block_ms=6000) == []


def test_progress_of_every_running_job_in_one_flush(r: redis.Redis) -> None:
    """The progress writer's flush: running jobs get the step and an event; others not."""
    from tasks.jobs import JobStore, events_key, job_key
    from tasks.progress import ProgressWriter

    store = JobStore("redis://127.0.0.1:6379/0", ttl_s=60)
    ids = [f"p-{MODEL}-{i}" for i in range(3)]
    for job_id, status in zip(ids, ("running", "running", "succeeded"), strict=True):
        store.create({"id": job_id, "status": status, "created_at": 1.0})
    try:
        writer = ProgressWriter(store, model="m-" + MODEL)
        for job_id in ids:
            writer.update(job_id, 3, 8)
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
    finally:
        r.delete(*(job_key(j) for j in ids), *(events_key(j) for j in ids))
