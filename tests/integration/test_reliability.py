"""Cancel, live events, idempotency, queue position and webhooks on real processes."""

from __future__ import annotations

import io
import itertools
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from harness.http import KilnHTTP
from harness.stack import Proc, Stack, wait_for
from harness.webhooks import Receiver
from tasks.jobs.store import JobStore

# Slow enough to act on mid-run (a step of a batch of two is about 0.15 s here), cheap
# enough for a shared 2-core machine.
SLOW = dict(model="tiny-sd", width=64, height=64, steps=24)
WAIT_S = 300


@pytest.fixture(scope="module")
def rstack(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Iterator[Stack]:
    """A stack of its own: no worker until a test starts one; private webhooks allowed."""
    s = Stack(
        tmp_path_factory.mktemp("reliability"),
        models_dir=tiny_models_dir,
        env_overrides={
            "KILN_WEBHOOK_ALLOW_PRIVATE": "true",
            "KILN_WEBHOOK_BACKOFF_S": "0.2",
            "KILN_WEBHOOK_MAX_ATTEMPTS": "4",
        },
    )
    try:
        s.start_servers()
        s.start_api()
        s.start_webhooks_worker()
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def rapi(rstack: Stack) -> KilnHTTP:
    return KilnHTTP(rstack.api_url)


class Workers:
    """The module's one tiny-sd worker, which takes one job at a time (so jobs visibly
    wait): started when a test needs it, stopped when a test needs none."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.proc: Proc | None = None

    def up(self) -> None:
        if self.proc is None or self.proc.popen.poll() is not None:
            self.proc = self.stack.start_worker("tiny-sd", args=("--concurrency", "1"))

    def down(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
        wait_for(lambda: self.stack.ready_workers("tiny-sd") == 0, timeout=30, what="no worker")


@pytest.fixture(scope="module")
def workers(rstack: Stack) -> Iterator[Workers]:
    w = Workers(rstack)
    yield w
    w.down()


@pytest.fixture
def worker(workers: Workers) -> None:
    workers.up()


@pytest.fixture
def no_worker(workers: Workers) -> None:
    workers.down()


def test_a_running_job_cancels_at_the_next_step_and_its_batch_mate_succeeds(
    rstack: Stack, rapi: KilnHTTP, no_worker: None
) -> None:
    # Both jobs wait in the queue before the one worker starts, so it takes them together.
    a = rapi.submit(prompt="victim", seed=1, **SLOW)
    b = rapi.submit(prompt="mate", seed=2, **SLOW)
    proc = rstack.start_worker("tiny-sd", name="batching-worker")
    try:
        wait_for(
            lambda: all(
                rapi.get(f"/v1/jobs/{j['id']}").json()["progress"]["step"] >= 2 for j in (a, b)
            ),
            timeout=WAIT_S,
            what="both jobs stepping",
        )
        r = rapi.delete(f"/v1/jobs/{a['id']}")
        assert r.status_code == 202 and r.json()["was"] == "running"
        victim, mate = rapi.wait(a["id"], timeout=WAIT_S), rapi.wait(b["id"], timeout=WAIT_S)
        assert victim["status"] == "canceled", victim
        assert victim["progress"]["step"] < SLOW["steps"]
        # Within one step: at most one more step finished after the cancel reached it.
        ended = [d for n, d in read_events(rapi, a["id"]) if n == "canceled"][-1]
        print(
            f"cancel reached the job after step {ended['cancel_seen_at_step']}; "
            f"it stopped after step {ended['steps_done']} of {SLOW['steps']}"
        )
        assert ended["steps_done"] - ended["cancel_seen_at_step"] <= 1, ended
        assert mate["status"] == "succeeded" and mate["batch_id"]
        # They shared one pipeline call: one worker ran both, in a batch of two images.
        store = JobStore(rstack.env["KILN_REDIS_URL"])
        ran_on = {(store.get(j["id"]) or {}).get("worker") for j in (a, b)}
        assert ran_on == {proc_name(proc)} and mate["batch_size"] == 2, (ran_on, mate)
        assert rstack.objects(f"generated/{a['id']}/") == []
    finally:
        proc.stop()


def proc_name(proc: Proc) -> str:
    """The worker name a ``kiln worker`` process without ``--gpu`` gives itself."""
    import socket

    return f"tiny-sd@cpu.{proc.popen.pid}@{socket.gethostname()}"


def test_a_job_canceled_before_any_worker_is_up_never_runs(
    rstack: Stack, rapi: KilnHTTP, workers: Workers, no_worker: None
) -> None:
    job = rapi.submit(prompt="never", model="tiny-sd", steps=2, seed=1)
    r = rapi.delete(f"/v1/jobs/{job['id']}")
    assert r.status_code == 200 and r.json() == {
        "id": job["id"],
        "status": "canceled",
        "was": "queued",
    }
    assert rapi.delete(f"/v1/jobs/{job['id']}").status_code == 409
    workers.up()  # and left up for the tests after this one
    after = rapi.wait(
        rapi.submit(prompt="after", model="tiny-sd", steps=2, seed=2)["id"], timeout=WAIT_S
    )
    assert after["status"] == "succeeded"
    record = rapi.get(f"/v1/jobs/{job['id']}").json()
    assert record["status"] == "canceled" and record["attempts"] == 0
    assert rstack.objects(f"generated/{job['id']}/") == []


def test_queue_position_decreases_and_eta_is_positive(rapi: KilnHTTP, worker: None) -> None:
    jobs = [rapi.submit(prompt=f"wait {i}", seed=i, **{**SLOW, "steps": 16}) for i in range(4)]
    last = jobs[-1]["id"]
    positions = []
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        view = rapi.get(f"/v1/jobs/{last}").json()
        if view["status"] != "queued":
            break
        assert view["eta_s"] is not None and view["eta_s"] > 0
        if not positions or view["queue_position"] != positions[-1]:
            positions.append(view["queue_position"])
        time.sleep(0.05)
    assert len(positions) >= 2, positions
    assert positions == sorted(positions, reverse=True) and positions[-1] < positions[0]
    for j in jobs:
        assert rapi.wait(j["id"], timeout=WAIT_S)["status"] == "succeeded"


def test_live_events_show_progress_to_the_end(rapi: KilnHTTP, worker: None) -> None:
    job = rapi.submit(prompt="stream me", seed=5, **{**SLOW, "steps": 20})
    events: list[tuple[str, dict]] = []
    with requests.get(
        f"{rapi.base_url}/v1/jobs/{job['id']}/events", stream=True, timeout=WAIT_S
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name:
                events.append((name, json.loads(line[6:])))
    names = [n for n, _ in events]
    assert names[0] == "queued" and "started" in names and names[-1] == "succeeded"
    steps = [d["step"] for n, d in events if n == "progress"]
    assert steps == sorted(steps) and steps[-1] == 20

    # Resumable: after the last event id, nothing but the end is sent again.
    first = requests.get(f"{rapi.base_url}/v1/jobs/{job['id']}/events", timeout=30).text
    last_id = [ln[4:] for ln in first.splitlines() if ln.startswith("id: ")][-2]
    rest = requests.get(
        f"{rapi.base_url}/v1/jobs/{job['id']}/events",
        headers={"Last-Event-ID": last_id},
        timeout=30,
    ).text
    assert [ln for ln in rest.splitlines() if ln.startswith("event: ")] == ["event: succeeded"]


def read_events(rapi: KilnHTTP, job_id: str, **headers: str) -> list[tuple[str, dict]]:
    """A finished job's whole event stream, read with a plain HTTP client."""
    text = requests.get(
        f"{rapi.base_url}/v1/jobs/{job_id}/events", headers=headers, timeout=30
    ).text
    out, name = [], None
    for line in text.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and name:
            out.append((name, json.loads(line[6:])))
    return out


def test_idempotency_key(rapi: KilnHTTP) -> None:
    body = {"prompt": "once", "model": "tiny-sd", "steps": 2, "seed": 3}
    first = rapi.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    again = rapi.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    other = rapi.post("/v1/jobs", json={**body, "seed": 4}, headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 409
    assert "Idempotency-Key" in other.json()["error"]["fields"]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


def webhook_state(rapi: KilnHTTP, job_id: str, states: set[str]) -> dict:
    out: dict = {}

    def check() -> bool:
        out.update(rapi.get(f"/v1/jobs/{job_id}").json()["webhook"] or {})
        return out.get("state") in states

    wait_for(check, timeout=WAIT_S, what=f"webhook of {job_id} in {states}")
    return out


def test_webhooks_are_signed_retried_and_end_dead(
    rstack: Stack, rapi: KilnHTTP, receiver: Receiver, worker: None
) -> None:
    ok = rapi.submit(
        prompt="hook", model="tiny-sd", steps=2, seed=1, webhook_url=receiver.url + "/ok"
    )
    flaky = rapi.submit(
        prompt="hook", model="tiny-sd", steps=2, seed=2, webhook_url=receiver.url + "/flaky"
    )
    dead = rapi.submit(
        prompt="hook", model="tiny-sd", steps=2, seed=3, webhook_url=receiver.url + "/dead"
    )
    assert webhook_state(rapi, ok["id"], {"delivered"})["attempts"] == 1
    assert webhook_state(rapi, flaky["id"], {"delivered"})["attempts"] == 3
    gone = rapi.submit(
        prompt="hook", model="tiny-sd", steps=2, seed=4, webhook_url=receiver.url + "/gone"
    )
    assert webhook_state(rapi, dead["id"], {"dead"})["attempts"] == 4
    gone_hook = webhook_state(rapi, gone["id"], {"dead"})
    assert gone_hook["attempts"] == 1 and gone_hook["last_result"] == "HTTP 410"  # no retry
    assert len(receiver.hits["/gone"]) == 1

    _, headers, body = receiver.hits["/ok"][0]
    payload = Webhook(rstack.webhook_secret).verify(body, headers)
    assert payload["type"] == "job.succeeded" and payload["data"]["id"] == ok["id"]
    times = [t for t, _, _ in receiver.hits["/dead"]]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 4
    # Full jitter: the gap after attempt i is 0.5-1.0 x base x 2**(i-1) (base 0.2 s here),
    # plus delivery overhead on a loaded machine, never less.
    for i, gap in enumerate(gaps, start=1):
        nominal = 0.2 * 2 ** (i - 1)
        assert 0.5 * nominal - 0.02 <= gap <= nominal + 3.0, (i, gaps)
    flaky_times = [t for t, _, _ in receiver.hits["/flaky"]]
    print(
        "webhook /flaky: 3 attempts, gaps "
        + ", ".join(f"{b - a:.2f}s" for a, b in itertools.pairwise(flaky_times))
        + "; /dead: 4 attempts, gaps "
        + ", ".join(f"{g:.2f}s" for g in gaps)
        + " (KILN_WEBHOOK_BACKOFF_S=0.2, full jitter)"
    )

    from harness.metrics import scrape, value

    fleet = scrape(f"{rstack.api_url}/metrics")
    assert value(fleet, "kiln_webhook_deliveries_total", outcome="delivered") >= 2
    assert value(fleet, "kiln_webhook_deliveries_total", outcome="dead") >= 1
    assert value(fleet, "kiln_webhook_deliveries_total", outcome="retried") >= 2


def test_private_webhook_targets_are_refused_unless_allowed(rstack: Stack) -> None:
    strict = KilnHTTP(rstack.start_api(env={"KILN_WEBHOOK_ALLOW_PRIVATE": "false"}))
    for url in ("http://169.254.169.254/", "http://127.0.0.1:9/hook", "http://10.1.2.3/"):
        r = strict.post("/v1/jobs", json={"prompt": "x", "model": "tiny-sd", "webhook_url": url})
        assert r.status_code == 422, r.text
        assert "webhook_url" in r.json()["error"]["fields"]


def send_raw(rstack: Stack, job_id: str, kwargs: dict) -> None:
    """What another Python service does: send ``kiln.generate`` straight to the queue."""
    from tasks.messaging.app import make_celery
    from tasks.messaging.names import GENERATE

    make_celery(rstack.settings).send_task(
        GENERATE, kwargs=kwargs, queue="gen.tiny-sd", task_id=job_id
    )


def test_bad_input_fails_at_once_and_is_never_retried(
    rstack: Stack, rapi: KilnHTTP, worker: None
) -> None:
    job_id = "bad-" + uuid.uuid4().hex
    send_raw(rstack, job_id, {"job_id": job_id, "model": "tiny-sd", "prompt": "x", "steps": -1})
    wait_for(
        lambda: rapi.get(f"/v1/jobs/{job_id}").status_code == 200,
        timeout=WAIT_S,
        what="the bad job's record",
    )
    done = rapi.wait(job_id, timeout=WAIT_S)
    assert done["status"] == "failed" and done["error"]["code"] == "invalid_request"
    assert done["attempts"] == 0
    events = read_events(rapi, job_id)
    assert "steps" in events[-1][1]["error"]["fields"]  # the field is named
    assert "retrying" not in [n for n, _ in events]


def test_a_celery_door_image_url_is_fetched_once_and_its_record_names_the_stored_key(
    rstack: Stack, rapi: KilnHTTP, receiver: Receiver, worker: None
) -> None:
    """What another service sends: an image by URL (with a token in it), no size."""
    import hashlib

    from PIL import Image

    from tasks.messaging.app import make_celery
    from tasks.messaging.names import GENERATE

    buf = io.BytesIO()
    Image.new("RGB", (80, 64), (30, 90, 200)).save(buf, "PNG")
    receiver.files["/in.png"] = buf.getvalue()
    url = receiver.url + "/in.png?token=s3cr3t-input-token"
    app = make_celery(rstack.settings)
    job_id = "door-" + uuid.uuid4().hex
    job = {"prompt": "a lake", "model": "tiny-sd", "steps": 2, "strength": 0.5}  # no seed

    def send(**extra: object) -> dict:
        # Not send_raw: each send has its own task id, so .get() reads that send's answer.
        kwargs = {**job, "job_id": job_id, "image": url, **extra}
        return app.send_task(GENERATE, kwargs=kwargs, queue="gen.tiny-sd").get(timeout=WAIT_S)

    done = send()
    assert done["status"] == "succeeded", done
    assert (done["params"]["width"], done["params"]["height"]) == (80, 64)  # from the image
    assert len(receiver.hits["/in.png?token=s3cr3t-input-token"]) == 1
    key = f"inputs/{job_id}/image.png"
    assert done["params"]["image"]["key"] == key
    assert done["params"]["image"]["sha256"] == hashlib.sha256(buf.getvalue()).hexdigest()
    assert rstack.objects(f"inputs/{job_id}/") == [key]
    recorded = json.dumps(JobStore(rstack.env["KILN_REDIS_URL"]).get(job_id))
    assert "s3cr3t-input-token" not in recorded and receiver.url not in recorded

    # The same message again (a duplicate delivery): the same job, its end, no fetch.
    again = send()
    assert again["status"] == "succeeded" and again["id"] == job_id, again
    assert len(receiver.hits["/in.png?token=s3cr3t-input-token"]) == 1
    # Another image under the same id: refused, that job untouched, nothing fetched.
    other = send(image=receiver.url + "/other.png")
    assert other["status"] == "failed" and "job_id" in other["error"]["fields"], other
    assert "/other.png" not in receiver.hits
    assert rapi.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"


def test_a_job_that_keeps_losing_its_worker_fails_with_a_clear_error(
    rstack: Stack, rapi: KilnHTTP, worker: None
) -> None:
    """Its 3 earlier deliveries each ended with the worker dead (no heartbeat)."""
    from tasks.jobs.records import new_record, task_kwargs
    from tasks.jobs.service import JobService

    d = JobService(rstack.settings)
    params = d.validate({"prompt": "poison", "model": "tiny-sd", "steps": 2, "seed": 1})
    job_id = uuid.uuid4().hex
    record = new_record(job_id, params)
    record.update(status="running", attempts=3, worker="tiny-sd@cpu1@gone-host")
    d.store.create(record)
    send_raw(rstack, job_id, task_kwargs(job_id, params))
    done = rapi.wait(job_id, timeout=WAIT_S)
    assert done["status"] == "failed" and done["error"]["code"] == "too_many_deliveries"
    assert "4 times" in done["error"]["message"]
    assert rstack.objects(f"generated/{job_id}/") == []


def test_open_event_streams_are_capped_per_process(rstack: Stack) -> None:
    capped = KilnHTTP(rstack.start_api(env={"KILN_SSE_MAX_STREAMS": "1"}))
    job = capped.submit(prompt="waits", model="sd15", steps=2)  # no sd15 worker: stays queued
    try:
        first = requests.get(
            f"{capped.base_url}/v1/jobs/{job['id']}/events", stream=True, timeout=30
        )
        assert first.status_code == 200
        second = capped.get(f"/v1/jobs/{job['id']}/events")
        assert second.status_code == 503 and second.headers["Retry-After"]
        assert second.json()["error"]["code"] == "too_many_streams"
        assert capped.get(f"/v1/jobs/{job['id']}").status_code == 200  # polling still works
        capped.delete(f"/v1/jobs/{job['id']}")  # the stream ends with the job
        assert "event: canceled" in first.text
        wait_for(
            lambda: capped.get(f"/v1/jobs/{job['id']}/events").status_code == 200,
            timeout=30,
            what="the slot given back",
        )
    finally:
        capped.delete(f"/v1/jobs/{job['id']}")
