"""API keys, scopes, job visibility, rate limits, quotas, body size, private results."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests
from openai import OpenAI
from PIL import Image

from app.auth import hash_key, new_key
from harness.http import KilnHTTP, fetch_image
from harness.stack import BIN, SECRETS, Stack

KEYS = {name: new_key() for name in ("alice", "bob", "reader", "ops")}
SCOPES = {"alice": "generate+read", "bob": "generate+read", "reader": "read", "ops": "admin"}
SECRETS.extend(KEYS.values())


@pytest.fixture(scope="module")
def sstack(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Iterator[Stack]:
    spec = ",".join(f"{n}:{hash_key(k)}:{SCOPES[n]}" for n, k in KEYS.items())
    s = Stack(
        tmp_path_factory.mktemp("security"),
        models_dir=tiny_models_dir,
        env_overrides={
            "KILN_PROFILE": "prod",
            "KILN_AUTH": "",
            "KILN_API_KEYS": spec,
            "KILN_MAX_BODY_BYTES": "4096",
            "KILN_MAX_CONCURRENT_JOBS": "3",
        },
    )
    try:
        s.start_servers()
        s.start_worker("tiny-sd")
        s.start_api()
        yield s
    finally:
        s.close()


def as_(stack: Stack, name: str | None, url: str | None = None) -> KilnHTTP:
    headers = {"Authorization": f"Bearer {KEYS[name]}"} if name else {}
    return KilnHTTP(url or stack.api_url, headers=headers)


JOB = {"prompt": "a red fox", "model": "tiny-sd", "steps": 2, "seed": 1}


def test_missing_or_wrong_key_is_401(sstack: Stack) -> None:
    assert as_(sstack, None).post("/v1/jobs", json=JOB).status_code == 401
    wrong = KilnHTTP(sstack.api_url, headers={"Authorization": "Bearer kiln_nope"})
    r = wrong.get("/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    # X-API-Key works too; health stays public.
    assert (
        KilnHTTP(sstack.api_url, headers={"X-API-Key": KEYS["reader"]})
        .get("/v1/models")
        .status_code
        == 200
    )
    assert as_(sstack, None).get("/healthz").status_code == 200


def test_missing_scope_is_403(sstack: Stack) -> None:
    r = as_(sstack, "reader").post("/v1/jobs", json=JOB)
    assert r.status_code == 403 and r.json()["error"]["fields"] == {"scope": ["generate"]}


def test_a_job_is_visible_to_its_key_and_admin_only(sstack: Stack) -> None:
    alice, bob, ops = as_(sstack, "alice"), as_(sstack, "bob"), as_(sstack, "ops")
    job = alice.submit(**JOB)
    assert alice.wait(job["id"])["status"] == "succeeded"
    assert bob.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert bob.delete(f"/v1/jobs/{job['id']}").status_code == 404
    assert bob.get(f"/v1/jobs/{job['id']}/events").status_code == 404
    assert ops.get(f"/v1/jobs/{job['id']}").status_code == 200


def test_openai_sdk_uses_the_key(sstack: Stack) -> None:
    client = OpenAI(base_url=f"{sstack.api_url}/v1", api_key=KEYS["alice"])
    resp = client.images.generate(
        model="tiny-sd", prompt="x", size="64x64", extra_body={"steps": 2}
    )
    assert resp.data[0].url


def test_rate_limit_is_shared_by_two_api_processes(sstack: Stack) -> None:
    env = {"KILN_RATE_LIMIT": "4/minute"}
    one, two = sstack.start_api(env=env), sstack.start_api(env=env)
    bob_one, bob_two = as_(sstack, "bob", one), as_(sstack, "bob", two)
    codes = []
    for i in range(6):
        api = bob_one if i % 2 == 0 else bob_two
        r = api.post("/v1/jobs", json={**JOB, "model": "sd15"})  # no worker: stays queued
        codes.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) > 0
            assert r.json()["error"]["code"] == "rate_limited"
        elif r.status_code == 202:
            api.delete(f"/v1/jobs/{r.json()['id']}")
    assert codes[:4] == [202] * 4 and codes[4:] == [429, 429]


def test_concurrent_job_quota(sstack: Stack) -> None:
    alice = as_(sstack, "alice")
    ids = [alice.submit(**{**JOB, "model": "sd15"})["id"] for _ in range(3)]  # queued, no worker
    r = alice.post("/v1/jobs", json={**JOB, "model": "sd15"})
    assert r.status_code == 429 and "Retry-After" in r.headers
    for job_id in ids:
        assert alice.delete(f"/v1/jobs/{job_id}").status_code == 200
    assert alice.post("/v1/jobs", json=JOB).status_code == 202


def test_oversized_body_is_413(sstack: Stack) -> None:
    # Routes without image inputs keep the small limit (KILN_MAX_BODY_BYTES).
    r = as_(sstack, "alice").post(
        "/v1/images/generations", json={"model": "tiny-sd", "prompt": "x" * 8000}
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert "KILN_MAX_BODY_BYTES" in r.json()["error"]["message"]


def test_another_keys_job_is_no_input_and_its_own_is(sstack: Stack) -> None:
    alice, bob = as_(sstack, "alice"), as_(sstack, "bob")
    job = alice.submit(**JOB)
    assert alice.wait(job["id"])["status"] == "succeeded"
    r = bob.post("/v1/jobs", json={**JOB, "image": {"job": job["id"]}})
    assert r.status_code == 404 and "image" in r.json()["error"]["fields"]
    chained = alice.submit(**JOB, image={"job": job["id"]}, strength=0.5)
    assert alice.wait(chained["id"])["status"] == "succeeded"


def test_results_are_private_unless_a_public_base_url_is_set(sstack: Stack) -> None:
    alice = as_(sstack, "alice")
    done = alice.run(**JOB)
    image = done["images"][0]
    assert "X-Amz-Signature" in image["url"]
    fetch_image(image["url"])
    bucket = sstack.env["KILN_S3_BUCKET"]
    unsigned = requests.get(
        f"{sstack.env['KILN_S3_ENDPOINT_URL']}/{bucket}/{image['key']}", timeout=10
    )
    assert unsigned.status_code in {400, 401, 403}
    assert "X-Amz-Expires=3600" in image["url"]
    public = as_(
        sstack,
        "alice",
        sstack.start_api(env={"KILN_PUBLIC_BASE_URL": "https://cdn.example.com/kiln"}),
    )
    url = public.get(f"/v1/jobs/{done['id']}").json()["images"][0]["url"]
    assert url == f"https://cdn.example.com/kiln/{image['key']}"


def test_presigned_urls_expire_as_configured(sstack: Stack) -> None:
    alice = as_(sstack, "alice")
    done = alice.run(**JOB)
    short = as_(sstack, "alice", sstack.start_api(env={"KILN_URL_EXPIRY_S": "1"}))
    url = short.get(f"/v1/jobs/{done['id']}").json()["images"][0]["url"]
    assert "X-Amz-Expires=1&" in url
    time.sleep(2.5)  # past the expiry: the S3 server itself refuses the URL
    assert requests.get(url, timeout=10).status_code in {400, 401, 403}


@pytest.mark.parametrize(
    ("args", "kwargs", "fields"),
    [
        ((), {"prompt": 42, "model": "tiny-sd", "steps": "many"}, {"prompt", "steps"}),
        (
            (),
            {"model": "tiny-sd", "n": 10**30, "loras": "all", "seed": [1]},
            {"prompt", "n", "loras", "seed"},
        ),
        ((), {"prompt": "x", "model": {"name": "tiny-sd"}, "width": 1e9}, {"model", "width"}),
        ((), {"prompt": "x", "model": "sdxl"}, {"model"}),  # sent to the wrong queue
        (("a red fox", 4), {}, {"_schema"}),  # positional arguments
        (
            (),
            {"prompt": "x", "model": "tiny-sd", "webhook_url": "http://169.254.169.254/"},
            {"webhook_url"},
        ),
    ],
    ids=["wrong-types", "out-of-range", "nested-junk", "wrong-queue", "positional", "webhook"],
)
def test_malformed_celery_payload_fails_the_job_and_the_worker_serves_on(
    sstack: Stack, args: tuple, kwargs: dict, fields: set[str]
) -> None:
    from tasks.jobs.store import JobStore
    from tasks.messaging.app import make_celery

    app = make_celery(sstack.settings)
    bad = app.send_task("kiln.generate", queue="gen.tiny-sd", args=args, kwargs=kwargs)
    record = bad.get(timeout=60)
    assert record["status"] == "failed"
    assert record["error"]["code"] == "invalid_request"
    assert set(record["error"]["fields"]) >= fields
    stored = JobStore(sstack.settings.redis_url).get(bad.id)
    assert stored and stored["status"] == "failed" and stored["error"] == record["error"]
    good = app.send_task("kiln.generate", queue="gen.tiny-sd", kwargs=JOB).get(timeout=60)
    assert good["status"] == "succeeded"


def test_pickle_messages_are_refused_and_the_worker_serves_on(sstack: Stack) -> None:
    from tasks.jobs.store import JobStore
    from tasks.messaging.app import make_celery

    app = make_celery(sstack.settings)
    assert app.conf.accept_content == ["json"]
    bad = app.send_task("kiln.generate", queue="gen.tiny-sd", kwargs=JOB, serializer="pickle")
    good = app.send_task("kiln.generate", queue="gen.tiny-sd", kwargs=JOB).get(timeout=60)
    assert good["status"] == "succeeded"
    assert JobStore(sstack.settings.redis_url).get(bad.id) is None  # never ran
    worker = next(p for p in sstack.procs if p.name == "worker-tiny-sd")
    assert "untrusted content of type pickle" in worker.output()


def test_direct_messages_with_a_bad_or_taken_job_id_fail_and_touch_no_job(
    sstack: Stack,
) -> None:
    from tasks.jobs.store import JobStore
    from tasks.messaging.app import make_celery

    app, store = make_celery(sstack.settings), JobStore(sstack.settings.redis_url)
    alice = as_(sstack, "alice")
    done = alice.run(**JOB)
    queued = alice.submit(**{**JOB, "model": "sd15"})  # no sd15 worker: it stays queued
    try:
        before = {j: store.get(j) for j in (done["id"], queued["id"])}
        events = {j: len(store.events(j)) for j in before}
        etag = sstack.s3().head_object(
            Bucket=sstack.env["KILN_S3_BUCKET"], Key=done["images"][0]["key"]
        )["ETag"]
        mine = {**JOB, "prompt": "taken over"}
        sent = [
            app.send_task(
                "kiln.generate", queue="gen.tiny-sd", kwargs={**mine, "job_id": "../../x"}
            ),
            app.send_task("kiln.generate", queue="gen.tiny-sd", kwargs=mine, task_id="../../y"),
            app.send_task(
                "kiln.generate", queue="gen.tiny-sd", kwargs={**mine, "job_id": done["id"]}
            ),
            app.send_task(
                "kiln.generate", queue="gen.tiny-sd", kwargs={**mine, "job_id": queued["id"]}
            ),
        ]
        for res in sent:
            record = res.get(timeout=60)
            assert record["status"] == "failed", record
            assert set(record["error"]["fields"]) == {"job_id"}, record
            assert "images" not in record
        assert store.get("../../x") is None and store.get("../../y") is None
        assert {j: store.get(j) for j in before} == before
        assert {j: len(store.events(j)) for j in before} == events
        assert (
            sstack.s3().head_object(
                Bucket=sstack.env["KILN_S3_BUCKET"], Key=done["images"][0]["key"]
            )["ETag"]
            == etag
        )
        keys = [
            o["Key"]
            for o in sstack.s3()
            .list_objects_v2(Bucket=sstack.env["KILN_S3_BUCKET"])
            .get("Contents", [])
        ]
        assert keys and all(k.startswith("generated/") and ".." not in k for k in keys)
    finally:
        alice.delete(f"/v1/jobs/{queued['id']}")


def test_prod_profile_refuses_to_start_without_keys() -> None:
    real = {  # no dev default left for the prod profile to refuse first
        "KILN_PROFILE": "prod",
        "KILN_BROKER_URL": "redis://redis.internal:6379/0",
        "KILN_S3_ENDPOINT_URL": "https://s3.internal",
        "KILN_S3_ACCESS_KEY": "fleet",
        "KILN_S3_SECRET_KEY": "fleet-secret",
        "KILN_WEBHOOK_SECRET": "whsec_c2VjcmV0",
    }
    code = (
        "from app import create_app\nfrom config.settings import from_env\n"
        f"create_app({{'KILN_SETTINGS': from_env({real!r})}})"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "KILN_API_KEYS" in out.stderr


def test_no_secret_in_any_stored_record(sstack: Stack) -> None:
    """Job records, events, results and limiter keys hold no secret (with the jobs this
    test makes, and whatever the module's other tests left)."""
    import redis

    alice = as_(sstack, "alice")
    for seed in (1, 2):
        assert alice.run(prompt="secret check", model="tiny-sd", steps=2, seed=seed)["status"]
    secrets = [sstack.env["KILN_S3_SECRET_KEY"], sstack.env["KILN_WEBHOOK_SECRET"], *KEYS.values()]
    r = redis.Redis.from_url(sstack.settings.redis_url)
    seen = 0
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        if kind == "hash":
            blob = repr(r.hgetall(key))
        elif kind == "string":
            blob = repr(r.get(key))
        elif kind == "stream":
            blob = repr(r.xrange(key))
        elif kind in {"set", "zset", "list"}:
            blob = repr(r.sort(key, alpha=True)) if kind != "zset" else repr(r.zrange(key, 0, -1))
        else:
            continue
        seen += 1
        blob += key.decode(errors="replace")
        leaks = [s[:6] for s in secrets if s in blob]
        assert not leaks, f"{key!r} holds a secret: {leaks}"
    assert seen >= 4  # two records and their events, at least


def test_get_jobs_lists_the_callers_jobs_newest_first(sstack: Stack) -> None:
    alice, bob = as_(sstack, "alice"), as_(sstack, "bob")
    mine = [alice.run(**{**JOB, "seed": seed})["id"] for seed in (11, 12, 13)]
    theirs = bob.run(**JOB)["id"]
    listed = alice.get("/v1/jobs", params={"limit": 100}).json()
    ids = [j["id"] for j in listed["data"]]
    assert theirs not in ids and [i for i in ids if i in mine] == mine[::-1]
    created = [j["created_at"] for j in listed["data"]]
    assert created == sorted(created, reverse=True)
    first = alice.get("/v1/jobs", params={"limit": 2}).json()
    assert first["has_more"] and first["next_after"] == first["data"][-1]["id"]
    second = alice.get("/v1/jobs", params={"limit": 2, "after": first["next_after"]}).json()
    assert [j["id"] for j in first["data"] + second["data"]] == ids[:4]
    done = alice.get("/v1/jobs", params={"status": "succeeded", "model": "tiny-sd", "limit": 100})
    assert set(mine) <= {j["id"] for j in done.json()["data"]}
    assert all(j["status"] == "succeeded" for j in done.json()["data"])
    none = alice.get("/v1/jobs", params={"status": "succeeded", "model": "sd15"})  # no worker
    assert none.json() == {"object": "list", "data": [], "has_more": False, "next_after": None}
    bad = alice.get("/v1/jobs", params={"status": "done", "limit": 0})
    assert bad.status_code == 422 and set(bad.json()["error"]["fields"]) == {"status", "limit"}
    foreign = alice.get("/v1/jobs", params={"after": theirs})  # bob's job: no place in hers
    assert foreign.status_code == 422 and "after" in foreign.json()["error"]["fields"]
    assert as_(sstack, None).get("/v1/jobs").status_code == 401


def cli(stack: Stack, name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**stack.env, "KILN_URL": stack.api_url, "KILN_API_KEY": KEYS[name]}
    return subprocess.run(
        [str(BIN / "kiln"), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_kiln_jobs_list_shows_the_callers_jobs_and_not_another_keys(sstack: Stack) -> None:
    a = as_(sstack, "alice").run(**{**JOB, "prompt": "alice's fox"})["id"]
    b = as_(sstack, "bob").run(**{**JOB, "prompt": "bob's fox"})["id"]
    alices = cli(sstack, "alice", "jobs", "list")
    assert alices.returncode == 0, alices.stderr
    assert a in alices.stdout and b not in alices.stdout and "alice's fox" in alices.stdout
    bobs = cli(sstack, "bob", "jobs", "list", "--json")
    ids = [j["id"] for j in json.loads(bobs.stdout)["data"]]
    assert b in ids and a not in ids
    # A prefix of one's own job resolves; of another key's job it is not found.
    show = cli(sstack, "alice", "jobs", "show", a[:8])
    assert show.returncode == 0 and json.loads(show.stdout)["id"] == a
    other = cli(sstack, "bob", "jobs", "show", a[:8])
    assert other.returncode == 1 and "404" in other.stderr and other.stderr.count("\n") == 1


def test_jobs_show_refuses_an_ambiguous_prefix(sstack: Stack) -> None:
    from tasks.jobs.service import JobService

    jobs = JobService(sstack.settings)
    prefix = "cafe" + os.urandom(4).hex()
    for tail in ("1", "2"):
        jobs.submit(jobs.validate(dict(JOB)), owner="alice", job_id=prefix + tail)
    alice = as_(sstack, "alice")
    for tail in ("1", "2"):
        assert alice.wait(prefix + tail)["status"] == "succeeded"
    both = cli(sstack, "alice", "jobs", "show", prefix)
    assert both.returncode == 1 and both.stderr.count("\n") == 1, both.stderr
    assert "is the start of 2 jobs" in both.stderr
    assert prefix + "1" in both.stderr and prefix + "2" in both.stderr
    one = cli(sstack, "alice", "jobs", "show", prefix + "2")
    assert json.loads(one.stdout)["id"] == prefix + "2"
    assert cli(sstack, "bob", "jobs", "show", prefix).returncode == 1


def test_the_openai_edits_door_takes_a_generate_key(sstack: Stack) -> None:
    client = OpenAI(base_url=f"{sstack.api_url}/v1", api_key=KEYS["alice"])
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, "PNG")
    resp = client.images.edit(
        model="tiny-sd",
        image=("in.png", buf.getvalue(), "image/png"),
        prompt="x",
        extra_body={"steps": 2},
    )
    assert resp.data[0].url
    reader = OpenAI(base_url=f"{sstack.api_url}/v1", api_key=KEYS["reader"])
    with pytest.raises(openai.PermissionDeniedError):
        reader.images.edit(
            model="tiny-sd", image=("in.png", buf.getvalue(), "image/png"), prompt="x"
        )
