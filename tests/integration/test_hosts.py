"""The fleet across hosts: API, store (Valkey and S3), GPU workers and a client on hosts of
their own (network namespaces, ``harness.hosts``), the client on the public side only;
links cut for real (a host's switch port down), workers killed for real."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from standardwebhooks import Webhook

from harness import netns
from harness.hosts import LATE_MODEL, MODEL, HostFleet
from harness.stack import process_env, wait_for
from harness.webhooks import Receiver
from tasks.jobs import bookkeeping as bk
from tasks.jobs.store import events_key, job_key
from tasks.worker.reaper import REAP_S
from tasks.worker.runtime import HEARTBEAT_TTL_S

WAIT_S = 90
CUT_S = 20  # past the heartbeat TTL: the reaper hands the cut host's jobs to another
SLOW = {"model": MODEL, "steps": 30}  # a batch of four lasts a second or more


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Iterator[HostFleet]:
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    f = HostFleet(tmp_path_factory.mktemp("hosts"), models_dir=tiny_models_dir)
    try:
        f.start()
        f.start_api_host()
        gpus = [f.start_gpu_worker("gpu1"), f.start_gpu_worker("gpu2")]
        f.wait_worker_ready(MODEL, gpus[0], count=2)
        yield f
    finally:
        f.close()


@pytest.fixture(scope="module")
def receiver(fleet: HostFleet) -> Iterator[Receiver]:
    public = fleet.addr("client", "public")
    rec = fleet.on("client", lambda: Receiver(host=public))
    yield rec
    rec.close()


def record(fleet: HostFleet, job_id: str) -> dict[str, Any]:
    raw = fleet.store_call(lambda r: r.hgetall(job_key(job_id)))
    return {k: json.loads(v) for k, v in raw.items()}


def kinds(fleet: HostFleet, job_id: str) -> list[str]:
    return [f["type"] for _, f in fleet.store_call(lambda r: r.xrange(events_key(job_id)))]


def event_times(fleet: HostFleet, job_id: str, kind: str) -> list[float]:
    """When each ``kind`` event was added, by the store's clock (stream ids are its ms)."""
    entries = fleet.store_call(lambda r: r.xrange(events_key(job_id)))
    return [int(eid.split("-")[0]) / 1000 for eid, f in entries if f["type"] == kind]


def held_by(fleet: HostFleet, model: str = MODEL) -> dict[str, str]:
    """job id → the worker holding it (received or running)."""
    return fleet.store_call(lambda r: bk.held_jobs(r, model))


def worker_of(fleet: HostFleet, host: str, model: str = MODEL) -> str:
    """The worker name of ``host``'s process (``model@cpu.<pid>@machine``)."""
    pid = fleet.proc(host).popen.pid
    names = fleet.store_call(lambda r: r.zrange(bk.workers_key(model), 0, -1))
    return next(w for w in names if f".{pid}@" in w)


def submit(fleet: HostFleet, **job: Any) -> dict[str, Any]:
    return fleet.on("client", lambda: fleet.client().submit(**job))


def wait_ended(fleet: HostFleet, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return fleet.on("client", lambda: [fleet.client().wait(j["id"], timeout=WAIT_S) for j in jobs])


def assert_each_succeeded_once(fleet: HostFleet, done: list[dict[str, Any]]) -> None:
    for d in done:
        assert d["status"] == "succeeded", (d["id"], d.get("error"))
        assert kinds(fleet, d["id"]).count("succeeded") == 1, kinds(fleet, d["id"])
        assert fleet.objects(f"generated/{d['id']}/") == [f"generated/{d['id']}/0.png"]


def ensure_gpus(fleet: HostFleet) -> None:
    """Both GPU hosts plugged in and their workers ready, as the module started them."""
    for host in ("gpu1", "gpu2"):
        fleet.net.mend(host, "internal")  # type: ignore[union-attr]
        if fleet.proc(host).popen.poll() is not None:
            fleet.restart(fleet.proc(host))
    wait_for(lambda: fleet.ready_workers(MODEL) >= 2, timeout=WAIT_S, what="both GPU hosts")


def test_a_job_from_the_client_host_runs_on_a_gpu_host_its_url_and_webhook_work_there(
    fleet: HostFleet, receiver: Receiver
) -> None:
    job = submit(fleet, prompt="across", model=MODEL, seed=7, webhook_url=receiver.url + "/ok")
    (done,) = wait_ended(fleet, [job])
    assert done["status"] == "succeeded", done
    assert record(fleet, job["id"])["worker"] in {worker_of(fleet, h) for h in ("gpu1", "gpu2")}
    url = done["images"][0]["url"]
    store_public = fleet.addr("store", "public")
    assert url.startswith(f"http://{store_public}:"), url  # signed for the public address
    image = fleet.on("client", requests.get, url, timeout=10)
    assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
    # The internal side is not the client's: no route there from the client host.
    inside = url.replace(store_public, fleet.addr("store"))
    with pytest.raises(requests.ConnectionError):
        fleet.on("client", requests.get, inside, timeout=3)
    wait_for(lambda: receiver.hits.get("/ok"), timeout=WAIT_S, what="the webhook")
    _, headers, body = receiver.hits["/ok"][0]
    sent = Webhook(fleet.webhook_secret).verify(body, headers)
    assert sent["data"]["id"] == job["id"]
    assert sent["data"]["images"][0]["url"].startswith(f"http://{store_public}:")


def busy_host(fleet: HostFleet, jobs: list[dict[str, Any]], *, running: bool) -> str:
    """The GPU host that holds one of ``jobs`` (``running``: mid-batch, its start
    recorded), whichever of the two the broker gave it to."""
    workers = {worker_of(fleet, h): h for h in ("gpu1", "gpu2")}
    found: list[str] = []

    def look() -> bool:
        for j in jobs:
            rec = record(fleet, j["id"])
            step = (rec.get("progress") or {}).get("step", 0)
            if rec.get("worker") in workers and (
                not running or (rec.get("status") == "running" and step >= 1)
            ):
                found.append(workers[rec["worker"]])
                return True
        return False

    wait_for(look, timeout=WAIT_S, what="a GPU host holding a job")
    return found[0]


def test_a_gpu_host_cut_from_the_store_mid_batch_loses_no_job_and_ends_each_once(
    fleet: HostFleet,
) -> None:
    ensure_gpus(fleet)
    jobs = [submit(fleet, prompt=f"partition {i}", seed=i, **SLOW) for i in range(4)]
    # Its start recorded: the cut host will come back to record an end of its own.
    host = busy_host(fleet, jobs, running=True)
    cut_worker = worker_of(fleet, host)
    try:
        fleet.net.cut(host, "internal")
        cut_at = time.time()
        on_cut = {j for j, w in held_by(fleet).items() if w == cut_worker}
        time.sleep(CUT_S)  # the partition lasts this long, whatever happens inside it
    finally:
        fleet.net.mend(host, "internal")
    mended_at = time.time()
    done = wait_ended(fleet, jobs)
    ended_at = {d["id"]: event_times(fleet, d["id"], "succeeded")[0] for d in done}
    # The cut host comes back, finds its jobs ended elsewhere and lets go of them.
    wait_for(lambda: fleet.ready_workers(MODEL) >= 2, timeout=WAIT_S, what=f"{host} back")
    wait_for(lambda: cut_worker not in held_by(fleet).values(), timeout=WAIT_S, what="letting go")
    let_go_at = time.time()
    assert_each_succeeded_once(fleet, done)
    finished_by = {d["id"]: record(fleet, d["id"])["worker"] for d in done}
    print(
        f"\ncut {host} for {CUT_S}s holding {len(on_cut)} job(s); all {len(done)} succeeded "
        f"{max(ended_at.values()) - mended_at:+.1f}s after the link was restored "
        f"({max(ended_at.values()) - cut_at:.1f}s after the cut); {host} let go "
        f"{let_go_at - mended_at:.1f}s after; finished on the cut host: "
        f"{sum(finished_by[j] == cut_worker for j in on_cut)} of {len(on_cut)}; "
        f"ends counted: {sum(kinds(fleet, d['id']).count('succeeded') for d in done)}"
    )
    for job_id in on_cut:
        if finished_by[job_id] != cut_worker:  # sent again while the host was away
            assert kinds(fleet, job_id).count("requeued") >= 1, kinds(fleet, job_id)


def test_a_gpu_host_killed_holding_jobs_has_them_finished_by_the_other_host(
    fleet: HostFleet,
) -> None:
    ensure_gpus(fleet)
    jobs = [submit(fleet, prompt=f"killed {i}", seed=10 + i, **SLOW) for i in range(4)]
    host = busy_host(fleet, jobs, running=False)
    other = "gpu2" if host == "gpu1" else "gpu1"
    dead, alive = worker_of(fleet, host), worker_of(fleet, other)
    fleet.proc(host).kill()  # started again by the next test that needs it
    killed_at = time.time()
    on_dead = {j for j, w in held_by(fleet).items() if w == dead}
    done = wait_ended(fleet, jobs)
    assert_each_succeeded_once(fleet, done)
    resent_after = []
    for job_id in on_dead:
        assert record(fleet, job_id)["worker"] == alive
        requeued = event_times(fleet, job_id, "requeued")
        assert len(requeued) == 1, kinds(fleet, job_id)
        resent_after.append(requeued[0] - killed_at)
    bound = HEARTBEAT_TTL_S + REAP_S
    print(f"\nkilled {host} holding {len(on_dead)} job(s): re-sent {max(resent_after):.1f}s after")
    assert max(resent_after) <= bound + 5  # the dead-worker bound, with a loaded box's slack


def test_the_api_host_cut_from_the_store_answers_503_and_the_same_key_works_after(
    fleet: HostFleet,
) -> None:
    body = {"prompt": "cut api", "model": MODEL, "seed": 21}
    headers = {"Idempotency-Key": "api-cut-1"}
    before = fleet.store_call(lambda r: bk.active_jobs(r, "client"))
    with fleet.net.cut_off("api", "internal"):
        refused = fleet.from_client("post", "/v1/jobs", json=body, headers=headers)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) > 0
        assert fleet.store_call(lambda r: bk.active_jobs(r, "client")) == before

    # Nothing half-made: no record names this prompt, no slot is taken.
    def named() -> list[str]:
        def scan(r: Any) -> list[str]:
            keys = [k for k in r.scan_iter("kiln:job:*") if k.count(":") == 2]
            return [k for k in keys if "cut api" in (r.hget(k, "params") or "")]

        return fleet.store_call(scan)

    assert named() == []
    again = fleet.from_client("post", "/v1/jobs", json=body, headers=headers)
    assert again.status_code == 202, again.text
    (done,) = wait_ended(fleet, [again.json()])
    assert done["status"] == "succeeded"
    assert named() == [job_key(done["id"])]
    same = fleet.from_client("post", "/v1/jobs", json=body, headers=headers)
    assert same.json()["id"] == done["id"]  # the key still names the one job


def test_a_host_joining_with_only_the_printed_settings_serves_jobs(fleet: HostFleet) -> None:
    printed = fleet.run_kiln_on("gpu1", "config", "--env", "--secrets")
    assert printed.returncode == 0, printed.stderr
    settings = dict(line.split("=", 1) for line in printed.stdout.splitlines())
    assert settings["KILN_BROKER_URL"] == fleet.env["KILN_BROKER_URL"]
    late = fleet.start_gpu_worker("gpu3", model=LATE_MODEL, env={**process_env(), **settings})
    try:
        fleet.wait_worker_ready(LATE_MODEL, late)
        job = submit(fleet, prompt="late", model=LATE_MODEL, seed=3)
        (done,) = wait_ended(fleet, [job])
        assert done["status"] == "succeeded", done
        assert record(fleet, job["id"])["worker"] == worker_of(fleet, "gpu3", LATE_MODEL)
        image = fleet.on("client", requests.get, done["images"][0]["url"], timeout=10)
        assert image.status_code == 200
    finally:
        late.stop()
