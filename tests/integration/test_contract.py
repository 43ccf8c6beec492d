"""The doors keep one contract: what a new user and a hostile one can send, answered the
same way on every door.

One stack of its own (Valkey, an S3 server, the API with two API keys, no worker: jobs
stay queued, their messages on the broker's queue): the classic door's
image checks, the concurrent-job quota under parallel submits, the edit doors' rate
limit, the four Idempotency-Key cases, nested JSON on every door, invented HTTP
methods, and a filtered listing of a large index.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
import requests
from PIL import Image

from app.auth import hash_key
from harness.http import KilnHTTP
from harness.stack import SECRETS, Stack, free_port, wait_for
from tasks.jobs import bookkeeping as bk
from tasks.messaging.names import queue_for

KEYS = {name: f"kiln_contract-{name}-key" for name in ("alice", "bob", "carol")}
SECRETS.extend(KEYS.values())
QUOTA = 2
QUEUED = {"prompt": "waits", "model": "tiny-sd", "steps": 2}  # no worker here: stays queued
OUTAGE_RETRY_AFTER_S = 2  # what a 503 for a part that is down asks a client to wait
MAX_ROWS_READ = 1000  # index rows one page of a listing may read, whatever the index holds
DEEP = 5000  # nesting levels of a hostile body (Python's parser gives up near 1000)


@pytest.fixture(scope="module")
def cstack(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Iterator[Stack]:
    spec = ",".join(f"{n}:{hash_key(k)}:generate+read" for n, k in KEYS.items())
    s = Stack(
        tmp_path_factory.mktemp("contract"),
        models_dir=tiny_models_dir,
        env_overrides={
            "KILN_AUTH": "on",
            "KILN_API_KEYS": spec,
            "KILN_MAX_CONCURRENT_JOBS": str(QUOTA),
        },
    )
    try:
        s.start_servers()
        s.start_api(threads=24)
        yield s
    finally:
        s.close()


@pytest.fixture
def r(cstack: Stack) -> redis.Redis:
    return redis.Redis.from_url(cstack.env["KILN_REDIS_URL"], decode_responses=True)


def as_(stack: Stack, name: str | None, url: str | None = None) -> KilnHTTP:
    headers = {"Authorization": f"Bearer {KEYS[name]}"} if name else {}
    return KilnHTTP(url or stack.api_url, headers=headers)


@pytest.fixture
def alice(cstack: Stack, r: redis.Redis) -> Iterator[KilnHTTP]:
    """Alice, with none of her jobs live before or after the test."""
    api = as_(cstack, "alice")
    cancel_live(api, r, "alice")
    yield api
    cancel_live(api, r, "alice")


def cancel_live(api: KilnHTTP, r: redis.Redis, owner: str) -> None:
    for job_id in r.smembers(bk.active_key(owner)):
        api.delete(f"/v1/jobs/{job_id}")
    assert bk.active_jobs(r, owner) == 0


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


def png_data_url() -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes()).decode()


def everything_stored(r: redis.Redis) -> str:
    """Every job record and every broker message of the stack's Valkey, as one text."""
    parts = [json.dumps(r.hgetall(k)) for k in r.scan_iter("kiln:job:*") if r.type(k) == "hash"]
    for queue in r.scan_iter("gen.*"):
        parts += r.lrange(queue, 0, -1)
    return "\n".join(parts)


def closed_port() -> int:
    port = free_port()
    with socket.socket() as s:  # nothing listens there: connections are refused at once
        s.bind(("127.0.0.1", port))
    return port


# -- the classic door checks image inputs as every door does ----------------------------
def test_the_classic_door_refuses_a_bad_image_and_keeps_no_url_or_pixels(
    cstack: Stack, alice: KilnHTTP, r: redis.Redis
) -> None:
    broken = alice.post("/generate", json={**QUEUED, "image": "data:image/png;base64,!!"})
    assert broken.status_code == 422 and "image" in broken.json()["error"]["fields"], broken.text
    private = "https://127.0.0.1/in.png?token=classic-secret"
    refused = alice.post("/generate", json={**QUEUED, "image": private})
    assert refused.status_code == 422 and "image" in refused.json()["error"]["fields"]
    image = png_data_url()
    ok = alice.post("/generate", json={**QUEUED, "image": image})
    assert ok.status_code == 200, ok.text
    job = alice.get(f"/v1/jobs/{ok.json()['job_id']}").json()
    assert job["params"]["image"]["key"].startswith("inputs/")
    assert job["params"]["image"]["source"] == "data_url"
    stored = everything_stored(r)
    assert "classic-secret" not in stored and image.split(",", 1)[1][:40] not in stored


# -- the quota is one atomic step ----------------------------------------------------------
def test_sixteen_parallel_submits_on_a_two_job_key_accept_exactly_two(
    cstack: Stack, alice: KilnHTTP, r: redis.Redis
) -> None:
    urls = [f"{u}/v1/jobs" for u in (alice.base_url, cstack.start_api(threads=8))]
    headers = dict(alice.http.headers)

    def submit(i: int) -> int:  # through two API processes, as a fleet runs them
        body = {**QUEUED, "seed": i}
        return requests.post(urls[i % 2], json=body, headers=headers, timeout=60).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(submit, range(16)))
    assert sorted(codes) == [202] * QUOTA + [429] * (16 - QUOTA), codes
    assert bk.active_jobs(r, "alice") == QUOTA


# -- the edit doors count against the rate limit -------------------------------------------
def test_the_edit_doors_answer_429_past_the_rate_limit(cstack: Stack) -> None:
    url = cstack.start_api(env={"KILN_RATE_LIMIT": "2/minute"})
    bob = as_(cstack, "bob", url)
    for door in ("/v1/images/edits", "/v1/images/variations"):
        form = {"model": "sd15", "prompt": "x"} if door.endswith("edits") else {"model": "sd15"}
        files = {"note": ("note.txt", b"not an image")}
        codes = [
            bob.http.post(bob.base_url + door, data=form, files=files, timeout=30) for _ in range(3)
        ]
        # No image: a 400 each, counted all the same; the third is over the limit.
        assert [c.status_code for c in codes[:2]] == [400, 400], codes[0].text
        assert codes[2].status_code == 429 and int(codes[2].headers["Retry-After"]) > 0
        assert codes[2].json()["error"]["code"] == "rate_limited"  # OpenAI's shape
        bob = as_(cstack, "alice", url)  # the other door, on a fresh key's budget


# -- image-URL fetches hold API threads: capped ----------------------------------------
class SlowImages:
    """An image server on 127.0.0.1 that holds every GET until ``release``."""

    def __init__(self) -> None:
        self.arrivals = 0
        self.release = threading.Event()
        outer, body = self, png_bytes()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.arrivals += 1
                outer.release.wait(60)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


def test_image_url_fetches_are_capped_per_api_process_and_per_key(
    cstack: Stack, alice: KilnHTTP, r: redis.Redis
) -> None:
    env = {
        "KILN_WEBHOOK_ALLOW_PRIVATE": "true",  # the slow server is on loopback
        "KILN_INPUT_FETCH_MAX": "2",
        "KILN_KEY_SLOT_SHARE": "0.5",
    }
    url, images = cstack.start_api(env=env), SlowImages()
    body = {**QUEUED, "image": f"{images.url}/in.png"}
    try:
        with ThreadPoolExecutor(2) as pool:
            held = [
                pool.submit(as_(cstack, n, url).post, "/v1/jobs", body) for n in ("alice", "bob")
            ]
            wait_for(lambda: images.arrivals == 2, timeout=30, what="two fetches held")
            own_share = as_(cstack, "alice", url).post("/v1/jobs", json=body)
            assert own_share.status_code == 429, own_share.text
            assert own_share.json()["error"]["code"] == "key_slot_share_exceeded"
            full = as_(cstack, "carol", url).post("/v1/jobs", json=body)
            assert full.status_code == 503 and full.headers["Retry-After"], full.text
            assert full.json()["error"]["code"] == "too_many_fetches"
            assert images.arrivals == 2  # neither of them fetched anything
            images.release.set()
            assert [f.result().status_code for f in held] == [202, 202]
    finally:
        images.close()
        cancel_live(as_(cstack, "bob"), r, "bob")


# -- Idempotency-Key ---------------------------------------------------------------------
def test_a_refused_submit_answers_the_outages_retry_after_and_frees_its_key(
    cstack: Stack, alice: KilnHTTP
) -> None:
    """A broker that refuses the message: a 503 with its own Retry-After, nothing left of
    the attempt, and the same key and body make the job once the broker is back."""
    down = cstack.start_api(env={"KILN_BROKER_URL": f"redis://127.0.0.1:{closed_port()}/0"})
    headers = {"Idempotency-Key": "refused-1"}
    r = as_(cstack, "alice", down).post("/v1/jobs", json=QUEUED, headers=headers)
    assert r.status_code == 503 and r.json()["error"]["code"] == "broker_unavailable", r.text
    again = alice.post("/v1/jobs", json=QUEUED, headers=headers)
    assert again.status_code == 202 and again.json()["status"] == "queued", again.text
    assert r.headers["Retry-After"] == str(OUTAGE_RETRY_AFTER_S)  # not the limiter's


def test_a_submit_that_fails_after_its_checks_leaves_its_key_free(
    cstack: Stack, alice: KilnHTTP
) -> None:
    """The job store refuses the record's write (a user whose ACL lacks HSET): a 503,
    and the key is not held "in progress" by a job that was never written."""
    admin = redis.Redis.from_url(cstack.env["KILN_REDIS_URL"])
    admin.execute_command(
        "ACL", "SETUSER", "nohset", "on", ">nohset-pw", "~*", "&*", "+@all", "-hset"
    )
    port = cstack.env["KILN_REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
    url = cstack.start_api(env={"KILN_REDIS_URL": f"redis://nohset:nohset-pw@127.0.0.1:{port}/0"})
    headers = {"Idempotency-Key": "unwritten-1"}
    r = as_(cstack, "alice", url).post("/v1/jobs", json=QUEUED, headers=headers)
    assert r.status_code == 503, r.text
    again = alice.post("/v1/jobs", json=QUEUED, headers=headers)
    assert again.status_code == 202, again.text
    assert r.json()["error"]["code"] == "job_store_unavailable", r.text


def test_an_idempotent_retry_gets_its_job_when_the_quota_is_full(
    cstack: Stack, alice: KilnHTTP
) -> None:
    headers = {"Idempotency-Key": "full-quota-1"}
    first = alice.post("/v1/jobs", json=QUEUED, headers=headers)
    assert first.status_code == 202, first.text
    for i in range(QUOTA - 1):
        alice.submit(**{**QUEUED, "seed": 100 + i})
    assert alice.post("/v1/jobs", json=QUEUED).status_code == 429  # full
    again = alice.post("/v1/jobs", json=QUEUED, headers=headers)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"], again.text


# -- nested JSON ----------------------------------------------------------------------------
def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_deeply_nested_json_is_a_400_on_every_door(cstack: Stack, alice: KilnHTTP) -> None:
    jsoned = {"Content-Type": "application/json"}
    for door in ("/v1/jobs", "/generate", "/v1/images/generations"):
        body = '{"prompt": ' + deep(DEEP) + "}"
        r = alice.http.post(alice.base_url + door, data=body, headers=jsoned, timeout=30)
        assert r.status_code == 400, (door, r.status_code, r.text[:300])
        assert "nested" in r.text, r.text
    forms = (
        ("/v1/jobs", {"prompt": "x", "model": "sd15", "loras": deep(DEEP)}),
        ("/v1/jobs", {"prompt": "x", "model": "sd15", "image": '{"a":' * 40 + "1" + "}" * 40}),
        ("/v1/images/edits", {"prompt": "x", "image": '{"job": ' + deep(DEEP) + "}"}),
    )
    for door, form in forms:
        files = {"unused": ("u.txt", b"x")}
        r = alice.http.post(alice.base_url + door, data=form, files=files, timeout=30)
        assert r.status_code == 400, (door, r.status_code, r.text[:300])
        assert "nested" in r.text, r.text
    assert alice.get("/healthz").ok


# -- metric labels --------------------------------------------------------------------------
def test_invented_methods_add_no_metric_series(cstack: Stack) -> None:
    url = cstack.api_url
    for i in range(60):
        requests.request(f"BREW{i}", f"{url}/v1/models", timeout=10)
    metrics = requests.get(f"{url}/metrics", timeout=10).text
    methods = {
        line.split('method="', 1)[1].split('"', 1)[0]
        for line in metrics.splitlines()
        if line.startswith("kiln_http_requests_total{")
    }
    assert not any(m.startswith("BREW") for m in methods), methods
    assert "other" in methods


# -- listing a large index ---------------------------------------------------------------
def test_a_filtered_listing_of_a_large_index_reads_a_bounded_part_of_it(
    cstack: Stack, r: redis.Redis
) -> None:
    """30 000 jobs of bob's, none of them failed: a page for status=failed reads a bounded
    number of index rows (counted by the server), and its cursor goes on from there."""
    from tasks.jobs.store import job_key

    owner, n, t0 = "bob", 30_000, time.time() - 3600
    with r.pipeline(transaction=False) as pipe:
        for i in range(n):
            job_id = f"bulk{i:05d}"
            pipe.hset(job_key(job_id), mapping={"id": json.dumps(job_id), "status": '"succeeded"'})
            pipe.expire(job_key(job_id), 3600)
            pipe.zadd(bk.owned_key(owner), {job_id: t0 + i})
        pipe.execute()
    bob = as_(cstack, "bob")
    r.execute_command("CONFIG", "RESETSTAT")
    page = bob.get("/v1/jobs", params={"status": "failed", "limit": 20})
    assert page.status_code == 200, page.text
    stats = r.info("commandstats")
    reads = stats.get("cmdstat_hgetall", {}).get("calls", 0)
    body = page.json()
    assert body["data"] == [] and body["has_more"] is True and body["next_after"], body
    assert reads <= MAX_ROWS_READ, reads
    after = bob.get("/v1/jobs", params={"status": "failed", "after": body["next_after"]}).json()
    assert after["has_more"] is True and after["next_after"] < body["next_after"]
    first = bob.get("/v1/jobs", params={"limit": 3}).json()
    assert [j["id"] for j in first["data"]] == ["bulk29999", "bulk29998", "bulk29997"]
    r.delete(bk.owned_key(owner))


def test_the_quota_and_the_queue_agree(cstack: Stack, alice: KilnHTTP, r: redis.Redis) -> None:
    job = alice.submit(**QUEUED)
    assert r.zscore(bk.queued_key("tiny-sd"), job["id"]) is not None
    assert job["id"] in r.smembers(bk.active_key("alice"))
    assert any(job["id"] in m for m in r.lrange(queue_for("tiny-sd"), 0, -1))
