"""A job store outage, as every door sees it.

One stack of its own: the job store's Valkey (with an append-only file, so a restart
keeps what it had), a second Valkey as the broker, an S3 server and the API; no
worker. Each test stops a real process and starts it again before it ends.
"""

from __future__ import annotations

import base64
import io
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from PIL import Image

from app.devfleet import valkey_argv
from harness.http import KilnHTTP
from harness.stack import Stack, free_port, wait_for
from tasks.jobs import bookkeeping as bk

JOB = {"prompt": "outage", "model": "tiny-sd", "steps": 2}
CODE, RETRY_AFTER = "job_store_unavailable", "2"  # config.errors.JobStoreUnavailable


@pytest.fixture(scope="module")
def ostack(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("store-outage"), models_dir=tiny_models_dir, persist=True)
    try:
        s.workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        s.spawn("broker", valkey_argv(port))
        s.start_servers(broker_url=f"redis://127.0.0.1:{port}/0")
        s.start_api()
        yield s
    finally:
        s.close()


def store_client(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.env["KILN_REDIS_URL"], decode_responses=True)


def restart(stack: Stack, name: str) -> None:
    proc = stack.proc(name)
    proc.kill()
    stack.restart(proc)
    url = stack.env["KILN_REDIS_URL"] if name == "valkey" else stack.env["KILN_BROKER_URL"]
    wait_for(lambda: redis.Redis.from_url(url).ping(), timeout=20, what=name)


def records(r: redis.Redis) -> set[str]:
    return {k for k in r.scan_iter("kiln:job:*") if not k.endswith(":events")}


def test_a_store_outage_between_the_record_and_the_message_never_answers_503_for_a_job_that_stays(
    ostack: Stack,
) -> None:
    """The broker hangs while the record is written; then the job store goes down and
    the broker refuses the message. The API cannot take the record back: it answers
    with the job (which the lost-message sweep sends), not a 503 for a job that stays."""
    r = store_client(ostack)
    r.config_set("appendfsync", "always")  # the record survives the store's SIGKILL
    before = records(r)
    broker = ostack.proc("broker")
    broker.popen.send_signal(signal.SIGSTOP)
    answer: list[requests.Response] = []
    submit = threading.Thread(
        target=lambda: answer.append(
            requests.post(f"{ostack.api_url}/v1/jobs", json=JOB, timeout=120)
        )
    )
    submit.start()
    try:
        wait_for(lambda: len(records(r) - before) == 1, timeout=30, what="the record")
        (key,) = records(r) - before
        job_id = key.removeprefix("kiln:job:{").removesuffix("}")
        ostack.proc("valkey").kill()  # the job store goes down ...
        broker.kill()  # ... and the broker refuses the message
        submit.join(90)
        assert answer, "no answer"
    finally:
        restart(ostack, "valkey")
        restart(ostack, "broker")
    (resp,) = answer
    r = store_client(ostack)
    record = r.hgetall(bk.job_key(job_id))
    assert record, "the record survives the store's restart"
    assert resp.status_code == 202, resp.text  # never a 503 for a job that stays
    assert resp.json()["id"] == job_id and record["status"] == '"queued"'
    assert r.zscore(bk.queued_key("tiny-sd"), job_id) is not None  # the sweep's to send
    assert requests.delete(f"{ostack.api_url}/v1/jobs/{job_id}", timeout=30).status_code == 200
    r.config_set("appendfsync", "everysec")


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 90)).save(buf, "PNG")
    return buf.getvalue()


def test_a_store_outage_is_one_error_and_one_retry_after_on_every_door(ostack: Stack) -> None:
    api = KilnHTTP(ostack.api_url)
    job = api.submit(**JOB)
    image = "data:image/png;base64," + base64.b64encode(png()).decode()
    ostack.proc("valkey").kill()
    try:
        native = {
            "POST /v1/jobs": api.post("/v1/jobs", json=JOB),
            "POST /v1/jobs image": api.post("/v1/jobs", json={**JOB, "image": image}),
            "GET /v1/jobs": api.get("/v1/jobs"),
            "GET /v1/jobs/<id>": api.get(f"/v1/jobs/{job['id']}"),
            "DELETE /v1/jobs/<id>": api.delete(f"/v1/jobs/{job['id']}"),
            "POST /generate": api.post("/generate", json=JOB),
            "GET /job/<id>": api.get(f"/job/{job['id']}"),
        }
        openai = {
            "generations": api.post(
                "/v1/images/generations", json={"prompt": "x", "model": "tiny-sd"}
            ),
            "edits": api.http.post(
                f"{api.base_url}/v1/images/edits",
                data={"prompt": "x", "model": "tiny-sd"},
                files={"image": ("in.png", png(), "image/png")},
                timeout=30,
            ),
        }
    finally:
        restart(ostack, "valkey")
    for door, resp in {**native, **openai}.items():
        assert resp.status_code == 503, (door, resp.status_code, resp.text)
        assert resp.headers.get("Retry-After") == RETRY_AFTER, (door, resp.headers)
        assert resp.json()["error"]["code"] == CODE, (door, resp.text)
    for door, resp in openai.items():
        assert resp.json()["error"]["type"] == "server_error", (door, resp.text)
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 200


def test_a_store_outage_ends_an_event_stream_with_an_error_event(ostack: Stack) -> None:
    api = KilnHTTP(ostack.api_url)
    job = api.submit(**JOB)
    with requests.get(f"{api.base_url}/v1/jobs/{job['id']}/events", stream=True, timeout=60) as r:
        lines = r.iter_lines(decode_unicode=True)
        assert read_until(lines, "event: queued")[-1] == "event: queued"
        ostack.proc("valkey").kill()
        try:
            rest = read_until(lines, "event: error")
            data = next(lines)
        finally:
            restart(ostack, "valkey")
    assert rest[-1] == "event: error", rest
    assert f'"code":"{CODE}"' in data, data
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 200


def read_until(lines: Iterator[str], wanted: str) -> list[str]:
    """The stream's lines up to the first one that is ``wanted`` (all of them if none)."""
    seen: list[str] = []
    for line in lines:
        seen.append(line)
        if line == wanted:
            break
    return seen
