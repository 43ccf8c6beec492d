"""Operating the fleet: metrics, readiness, structured logs, capacity."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import redis
import requests

from harness.http import KilnHTTP
from harness.metrics import Samples, scrape, value
from harness.stack import Stack, wait_for
from tasks.jobs import bookkeeping as bk


def counts(fleet: Samples, worker: Samples) -> dict[str, float]:
    """The counters this test moves, wherever the session's other tests left them."""
    return {
        "submitted": value(fleet, "kiln_jobs_submitted_total", model="tiny-sd", door="rest"),
        "finished": value(fleet, "kiln_jobs_finished_total", model="tiny-sd", status="succeeded"),
        "accepted": value(fleet, "kiln_http_requests_total", endpoint="jobs.Jobs", status="202"),
        "images": value(worker, "kiln_images_generated_total", model="tiny-sd"),
        "waits": value(worker, "kiln_job_queue_wait_seconds_count", model="tiny-sd"),
        "uploads": value(worker, "kiln_job_upload_seconds_count", model="tiny-sd"),
    }


def test_metrics_after_a_few_jobs(stack: Stack, api: KilnHTTP) -> None:
    fleet_url = f"{stack.api_url}/metrics"
    worker_url = f"http://127.0.0.1:{stack.worker_metrics_port}/metrics"
    api.run(prompt="warm", model="tiny-sd", steps=2, seed=99)  # every series exists
    # Other tests' jobs may still wait or run on the session's worker: let them end, so
    # that what moves now is this test's own three jobs.
    r = redis.Redis.from_url(stack.env["KILN_REDIS_URL"])
    wait_for(
        lambda: bk.depth(r, "tiny-sd") == 0 and not bk.held_jobs(r, "tiny-sd"),
        timeout=200,
        what="the session worker idle",
    )
    before = counts(scrape(fleet_url), scrape(worker_url))
    for i in range(3):
        assert (
            api.run(prompt=f"metric {i}", model="tiny-sd", steps=2, seed=i)["status"] == "succeeded"
        )
    fleet, worker = scrape(fleet_url), scrape(worker_url)
    after = counts(fleet, worker)
    assert {k: after[k] - before[k] for k in after} == dict.fromkeys(after, 3)
    assert value(fleet, "kiln_ready_workers", model="tiny-sd") >= 1
    assert value(fleet, "kiln_seconds_per_image", model="tiny-sd") > 0
    assert value(fleet, "kiln_queue_depth", model="tiny-sd", queue="gen.tiny-sd") == 0
    assert value(fleet, "kiln_broker_messages", model="tiny-sd", queue="gen.tiny-sd") == 0
    assert value(fleet, "kiln_http_request_seconds_count", endpoint="jobs.Job") > 0
    assert value(worker, "kiln_batch_size_count", model="tiny-sd") >= 1
    assert value(worker, "kiln_batch_fill_ratio_sum", model="tiny-sd") > 0
    assert value(worker, "kiln_job_run_seconds_sum", model="tiny-sd") > 0
    assert value(worker, "kiln_batch_seconds_sum", model="tiny-sd") > 0
    assert value(worker, "kiln_model_load_seconds", model="tiny-sd") > 0


def test_worker_logs_are_json_lines_with_job_and_batch(stack: Stack, api: KilnHTTP) -> None:
    api.run(prompt="log me", model="tiny-sd", steps=2, seed=1)
    log = next(p for p in stack.procs if p.name == "worker-tiny-sd").output()
    lines = [json.loads(ln) for ln in log.splitlines() if ln.startswith("{")]
    jobs = [ln for ln in lines if ln.get("job_id") and "duration_s" in ln]
    batches = [ln for ln in lines if ln.get("batch_id") and "batch_size" in ln]
    assert jobs and batches
    assert {"ts", "level", "logger", "msg", "model"} <= set(jobs[-1])


def test_capacity_from_measured_seconds_per_image(stack: Stack) -> None:
    out = stack.run_kiln("capacity", "-m", "tiny-sd", "--usd-per-gpu-hour", "3.5")
    assert out.returncode == 0, out.stderr
    row = out.stdout.splitlines()[1].split()
    assert row[0] == "tiny-sd" and float(row[1]) > 0 and float(row[4]) > 0
    assert row[5:7] == ["cpu", "fp32"], "capacity says where its timings came from"
    assert "CPU timings" in out.stdout


@pytest.fixture
def ready_stack(tmp_path: Path, tiny_models_dir: Path):
    s = Stack(tmp_path, models_dir=tiny_models_dir)
    try:
        s.start_servers()
        s.start_api()
        yield s
    finally:
        s.close()


def test_readyz_flips_when_the_only_worker_stops_and_returns(ready_stack: Stack) -> None:
    api = KilnHTTP(ready_stack.api_url)
    ready = f"{ready_stack.api_url}/readyz?model=tiny-sd"
    assert requests.get(ready, timeout=5).status_code == 503
    body = requests.get(f"{ready_stack.api_url}/readyz", timeout=5).json()
    assert body["checks"]["job_store"] and body["checks"]["storage"]

    worker = ready_stack.start_worker("tiny-sd", name="worker")
    assert requests.get(ready, timeout=5).status_code == 200
    os.kill(worker.popen.pid, signal.SIGSTOP)  # hung, as a dead one: no heartbeat past its TTL
    try:
        t0 = time.monotonic()
        wait_for(
            lambda: requests.get(ready, timeout=5).status_code == 503,
            timeout=20,
            what="readyz 503 after SIGSTOP",
        )
        print(f"readyz flipped {time.monotonic() - t0:.1f}s after SIGSTOP")
        assert api.get("/healthz").status_code == 200
    finally:
        os.kill(worker.popen.pid, signal.SIGCONT)
    wait_for(  # the same worker, going on: ready again at its next heartbeat
        lambda: requests.get(ready, timeout=5).status_code == 200,
        timeout=20,
        what="readyz 200 after SIGCONT",
    )
    worker.stop()  # a clean stop removes the heartbeat at once
    assert requests.get(ready, timeout=5).status_code == 503


def test_api_logs_are_json_lines_with_job_and_model(stack: Stack, api: KilnHTTP) -> None:
    job = api.submit(prompt="api log", model="tiny-sd", steps=1, seed=2)
    log = next(p for p in stack.procs if p.name.startswith("api-")).output()
    lines = [json.loads(ln) for ln in log.splitlines() if ln.startswith("{")]
    mine = [ln for ln in lines if ln.get("job_id") == job["id"]]
    assert mine, log[-2000:]
    assert mine[0]["model"] == "tiny-sd" and mine[0]["queue"] == "gen.tiny-sd"
    assert {"ts", "level", "logger", "msg"} <= set(mine[0])


def requests_to(samples: dict, prefix: str) -> float:
    return sum(
        v
        for (n, lbl), v in samples.items()
        if n == "kiln_http_requests_total" and dict(lbl).get("endpoint", "").startswith(prefix)
    )


def test_api_metrics_sum_every_gunicorn_worker(stack: Stack, tmp_path: Path) -> None:
    """Multiprocess mode: any process's /metrics counts the requests of all of them,
    including a worker that died (its counters stay in PROMETHEUS_MULTIPROC_DIR)."""
    prom = tmp_path / "prom"
    url = stack.start_api(workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(prom)})

    def pids() -> set[int]:
        return {int(p.stem.rsplit("_", 1)[1]) for p in prom.glob("counter_*.db")}

    sent = 0
    for _ in range(200):  # new connections until both processes have served some
        assert requests.get(f"{url}/v1/models", timeout=10).ok
        sent += 1
        if len(pids()) >= 2 and sent >= 10:
            break
    assert len(pids()) >= 2, "one gunicorn worker served every request"
    for _ in range(6):  # whichever process answers, the total is the same
        assert requests_to(scrape(f"{url}/metrics"), "models.") == sent

    victim = min(pids())
    os.kill(victim, signal.SIGKILL)  # gunicorn starts a new worker; counts survive
    wait_for(lambda: requests.get(f"{url}/healthz", timeout=2).ok, timeout=30, what="api")
    assert requests_to(scrape(f"{url}/metrics"), "models.") == sent
