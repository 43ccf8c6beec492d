"""Cancel, live events, idempotency, queue position and webhooks on real processes."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from tests.stack import Stack, wait_for
from tests.support import KilnHTTP

pytestmark = pytest.mark.integration
SLOW = dict(model="tiny-sd", width=128, height=128, steps=60)


@pytest.fixture(scope="module")
def rstack(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Iterator[Stack]:
    """A stack of its own: no worker until a test starts one; private webhooks allowed."""
    s = Stack(tmp_path_factory.mktemp("reliability"), models_dir=tiny_models_dir,
              env_overrides={"KILN_WEBHOOK_ALLOW_PRIVATE": "true",
                             "KILN_WEBHOOK_BACKOFF_S": "0.2", "KILN_WEBHOOK_MAX_ATTEMPTS": "4"})
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


@pytest.fixture(scope="module")
def worker(rstack: Stack, rapi: KilnHTTP) -> Iterator[None]:
    """One tiny-sd worker that takes one job at a time (so jobs visibly wait)."""
    proc = rstack.start_worker("tiny-sd", args=("--concurrency", "1"))
    yield
    proc.stop()


def test_a_job_canceled_before_any_worker_is_up_never_runs(rstack: Stack,
                                                           rapi: KilnHTTP) -> None:
    job = rapi.submit(prompt="never", model="tiny-sd", steps=2, seed=1)
    r = rapi.delete(f"/v1/jobs/{job['id']}")
    assert r.status_code == 200 and r.json() == {"id": job["id"], "status": "canceled",
                                                 "was": "queued"}
    assert rapi.delete(f"/v1/jobs/{job['id']}").status_code == 409
    proc = rstack.start_worker("tiny-sd", name="late-worker")
    try:
        after = rapi.run(prompt="after", model="tiny-sd", steps=2, seed=2)
        assert after["status"] == "succeeded"
    finally:
        proc.stop()
    record = rapi.get(f"/v1/jobs/{job['id']}").json()
    assert record["status"] == "canceled" and record["attempts"] == 0
    assert rstack.objects(f"generated/{job['id']}/") == []


def test_queue_position_decreases_and_eta_is_positive(rapi: KilnHTTP, worker: None) -> None:
    jobs = [rapi.submit(prompt=f"wait {i}", seed=i, **{**SLOW, "steps": 30}) for i in range(4)]
    last = jobs[-1]["id"]
    positions = []
    deadline = time.monotonic() + 120
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
        assert rapi.wait(j["id"])["status"] == "succeeded"


def test_live_events_show_progress_to_the_end(rapi: KilnHTTP, worker: None) -> None:
    job = rapi.submit(prompt="stream me", seed=5, **{**SLOW, "steps": 20})
    events: list[tuple[str, dict]] = []
    with requests.get(f"{rapi.base_url}/v1/jobs/{job['id']}/events", stream=True,
                      timeout=120) as r:
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
    rest = requests.get(f"{rapi.base_url}/v1/jobs/{job['id']}/events",
                        headers={"Last-Event-ID": last_id}, timeout=30).text
    assert [ln for ln in rest.splitlines() if ln.startswith("event: ")] == ["event: succeeded"]


def test_a_running_job_cancels_at_the_next_step_and_its_batch_mate_succeeds(
    rstack: Stack, rapi: KilnHTTP
) -> None:
    proc = rstack.start_worker("tiny-sd", name="batching-worker")
    try:
        a = rapi.submit(prompt="victim", seed=1, **SLOW)
        b = rapi.submit(prompt="mate", seed=2, **SLOW)
        wait_for(lambda: all(rapi.get(f"/v1/jobs/{j['id']}").json()["progress"]["step"] >= 2
                             for j in (a, b)), timeout=60, what="both jobs stepping")
        r = rapi.delete(f"/v1/jobs/{a['id']}")
        assert r.status_code == 202 and r.json()["was"] == "running"
        victim, mate = rapi.wait(a["id"]), rapi.wait(b["id"])
        assert victim["status"] == "canceled", victim
        assert victim["progress"]["step"] < SLOW["steps"]
        assert mate["status"] == "succeeded" and mate["batch_id"]
        assert rstack.objects(f"generated/{a['id']}/") == []
    finally:
        proc.stop()


def test_idempotency_key(rapi: KilnHTTP) -> None:
    body = {"prompt": "once", "model": "tiny-sd", "steps": 2, "seed": 3}
    first = rapi.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    again = rapi.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    other = rapi.post("/v1/jobs", json={**body, "seed": 4}, headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 409
    assert "Idempotency-Key" in other.json()["error"]["fields"]


class Receiver:
    """A local webhook receiver: /ok, /flaky (fails twice), /dead (always 500)."""

    def __init__(self) -> None:
        self.hits: dict[str, list[tuple[float, dict, bytes]]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                hits = outer.hits.setdefault(self.path, [])
                hits.append((time.monotonic(), dict(self.headers), body))
                ok = self.path == "/ok" or (self.path == "/flaky" and len(hits) >= 3)
                self.send_response(200 if ok else 500)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.server.shutdown()


def webhook_state(rapi: KilnHTTP, job_id: str, states: set[str]) -> dict:
    out: dict = {}

    def check() -> bool:
        out.update(rapi.get(f"/v1/jobs/{job_id}").json()["webhook"] or {})
        return out.get("state") in states

    wait_for(check, timeout=60, what=f"webhook of {job_id} in {states}")
    return out


def test_webhooks_are_signed_retried_and_end_dead(rstack: Stack, rapi: KilnHTTP,
                                                  receiver: Receiver, worker: None) -> None:
    ok = rapi.submit(prompt="hook", model="tiny-sd", steps=2, seed=1,
                     webhook_url=receiver.url + "/ok")
    flaky = rapi.submit(prompt="hook", model="tiny-sd", steps=2, seed=2,
                        webhook_url=receiver.url + "/flaky")
    dead = rapi.submit(prompt="hook", model="tiny-sd", steps=2, seed=3,
                       webhook_url=receiver.url + "/dead")
    assert webhook_state(rapi, ok["id"], {"delivered"})["attempts"] == 1
    assert webhook_state(rapi, flaky["id"], {"delivered"})["attempts"] == 3
    assert webhook_state(rapi, dead["id"], {"dead"})["attempts"] == 4

    _, headers, body = receiver.hits["/ok"][0]
    payload = Webhook(rstack.webhook_secret).verify(body, headers)
    assert payload["type"] == "job.succeeded" and payload["data"]["id"] == ok["id"]
    times = [t for t, _, _ in receiver.hits["/dead"]]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 4 and all(g > 0 for g in gaps)

    from tests.integration.test_operations import scrape, value

    fleet = scrape(f"{rstack.api_url}/metrics")
    assert value(fleet, "kiln_webhook_deliveries_total", outcome="delivered") >= 2
    assert value(fleet, "kiln_webhook_deliveries_total", outcome="dead") >= 1
    assert value(fleet, "kiln_webhook_deliveries_total", outcome="retried") >= 2


def test_private_webhook_targets_are_refused_unless_allowed(rstack: Stack) -> None:
    strict = KilnHTTP(rstack.start_api(env={"KILN_WEBHOOK_ALLOW_PRIVATE": "false"}))
    for url in ("http://169.254.169.254/", "http://127.0.0.1:9/hook", "http://10.1.2.3/"):
        r = strict.post("/v1/jobs", json={"prompt": "x", "model": "tiny-sd",
                                          "webhook_url": url})
        assert r.status_code == 422, r.text
        assert "webhook_url" in r.json()["error"]["fields"]
