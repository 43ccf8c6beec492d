"""One worker serving several models on one device, swapping them by demand: on the
session's Valkey and S3, with an API and a models file of its own (tiny SD 1.5 stand-ins
under several names, and one checkpoint that is not one)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from harness.http import KilnHTTP
from harness.metrics import scrape, value
from harness.stack import Proc, Stack, free_port, models_file, stop_all, wait_for

SWAP_WAIT_S = 3.0
BUDGET_MB = 10  # one tiny stand-in (6.8 MB of fp32 weights) fits, two do not


@dataclass
class Mx:
    api: KilnHTTP
    env: dict[str, str]


@dataclass
class Worker:
    proc: Proc
    metrics: str

    def samples(self) -> dict:
        return scrape(self.metrics)

    def loads(self, model: str | None = None) -> float:
        labels = {"model": model} if model else {}
        return _sum(self.samples(), "kiln_model_loads_total", **labels)


def _sum(samples: dict, name: str, **labels: str) -> float:
    try:
        return value(samples, name, **labels)
    except AssertionError:  # no sample yet: nothing counted
        return 0.0


def entry(name: str) -> dict[str, object]:
    return {
        "name": name,
        "family": "sd15",
        "tiny": "sd-mini",
        "max_batch": 4,
        "max_wait_ms": 100,
        "defaults": {"width": 64, "height": 64, "steps": 2},
    }


@pytest.fixture(scope="module")
def mx(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mx]:
    assert stack.models_dir is not None
    work = tmp_path_factory.mktemp("multiplex")
    bad = work / "broken.safetensors"
    bad.write_bytes(b"\xff" * 8 + b"this is not a checkpoint")
    broken = {
        "name": "mx-bad",
        "family": "sd15",
        "source": str(bad),
        "config": str(stack.models_dir / "sd-mini"),
        "dtype": "fp32",
        "defaults": {"width": 64, "height": 64, "steps": 2},
    }
    names = ["mx-a", "mx-b", "mx-c", "mx-d", "mx-e", "mx-f", "mx-g"]
    path = models_file(work, [*map(entry, names), broken])
    env = {
        "KILN_MODELS_FILE": str(path),
        "KILN_MODELS_DROPIN_DIR": str(work / "models.d"),
        "KILN_MAX_SWAP_WAIT_S": str(SWAP_WAIT_S),
        "KILN_TORCH_THREADS": "1",
    }
    before = len(stack.procs)
    try:
        yield Mx(KilnHTTP(stack.start_api(env=env)), env)
    finally:
        stop_all(stack.procs[before:])


def start(
    stack: Stack, mx: Mx, models: list[str], *args: str, env: dict[str, str] | None = None
) -> Worker:
    port = free_port()
    proc = stack.start_worker(
        models[0],
        models=tuple(models[1:]),
        name=f"mx-worker-{port}",
        args=("--metrics-port", str(port), *args),
        env={**mx.env, **(env or {})},
        timeout=180,
    )
    return Worker(proc, f"http://127.0.0.1:{port}/metrics")


@pytest.fixture(scope="module")
def one_slot(stack: Stack, mx: Mx) -> Iterator[Worker]:
    """One worker over three models and a broken one, room for one model at a time."""
    worker = start(stack, mx, ["mx-a", "mx-b", "mx-c", "mx-bad"], "--max-resident", "1")
    yield worker
    stop_all([worker.proc])


class Peak:
    """Samples a worker's metrics until stopped: the most models and bytes it held."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers
        self.models = self.bytes = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for w in self.workers:
                try:
                    s = w.samples()
                except OSError:  # a worker that has just been stopped
                    continue
                self.models = max(self.models, _sum(s, "kiln_model_resident"))
                self.bytes = max(self.bytes, _sum(s, "kiln_model_device_bytes"))

    def stop(self) -> Peak:
        self._stop.set()
        self._thread.join(5)
        return self


def wait_all(api: KilnHTTP, ids: list[str], timeout: float = 150) -> list[dict]:
    return [api.wait(i, timeout=timeout) for i in ids]


def test_one_worker_with_room_for_one_serves_interleaved_jobs_of_three_models(
    one_slot: Worker, mx: Mx
) -> None:
    peak = Peak([one_slot])
    models = ["mx-a", "mx-b", "mx-c"]
    ids = [mx.api.submit(prompt=f"p{i}", model=models[i % 3], seed=i)["id"] for i in range(9)]
    jobs = wait_all(mx.api, ids)
    peak.stop()
    assert [j["status"] for j in jobs] == ["succeeded"] * 9, [j.get("error") for j in jobs]
    assert len({j["worker"] for j in jobs}) == 1  # one process served all three
    assert jobs[0]["worker"].startswith("mx-a+mx-b+mx-c+mx-bad@cpu.")
    assert all(one_slot.loads(m) >= 1 for m in models)
    assert peak.models <= 1  # read back from the worker's metrics while it served
    loaded = [j for j in jobs if j["load_wait_s"]]
    assert loaded and all(j["load_wait_s"] > 0 for j in loaded)


def test_26_jobs_queued_at_once_over_two_models_cost_at_most_4_loads(
    one_slot: Worker, mx: Mx
) -> None:
    before = one_slot.loads()
    ids = [
        mx.api.submit(prompt=f"q{i}", model=m, seed=i)["id"]
        for m in ("mx-b", "mx-c")
        for i in range(13)
    ]
    jobs = wait_all(mx.api, ids)
    assert {j["status"] for j in jobs} == {"succeeded"}
    assert one_slot.loads() - before <= 4


def test_a_corrupt_checkpoint_fails_its_own_jobs_and_is_not_tried_for_every_job(
    one_slot: Worker, mx: Mx
) -> None:
    first = mx.api.run(prompt="broken", model="mx-bad", seed=1)
    second = mx.api.run(prompt="broken again", model="mx-bad", seed=2)
    fine = mx.api.run(prompt="fine", model="mx-a", seed=3)
    for job in (first, second):
        assert job["status"] == "failed"
        assert job["error"]["code"] == "model_unavailable"
        assert "model mx-bad cannot load" in job["error"]["message"]
    assert fine["status"] == "succeeded"
    tries = [
        line
        for line in one_slot.proc.output().splitlines()
        if '"logger": "kiln.resident"' in line and "model mx-bad cannot load" in line
    ]
    assert len(tries) == 1  # tried once, remembered for the next job
    assert one_slot.loads("mx-bad") == 0
    assert one_slot.proc.popen.poll() is None  # the worker and its other models serve on


def test_the_fleet_says_which_models_a_worker_holds_and_which_it_loads_on_demand(
    one_slot: Worker, mx: Mx
) -> None:
    mx.api.run(prompt="hold a", model="mx-a", seed=1)
    models = {m["id"]: m for m in mx.api.get("/v1/models").json()["data"]}
    assert models["mx-a"]["serving"] == "resident"
    assert models["mx-b"]["serving"] == "on_demand" and models["mx-b"]["load_s"] > 0
    ready = mx.api.get("/readyz", params={"model": ["mx-a", "mx-b"]})
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["standby"]["mx-b"] >= 1


def test_two_workers_over_the_same_two_models_settle_on_one_each_within_the_budget(
    stack: Stack, mx: Mx
) -> None:
    env = {"KILN_MODEL_BUDGET_MB": str(BUDGET_MB)}  # room for one model by bytes
    workers = [start(stack, mx, ["mx-d", "mx-e"], env=env) for _ in range(2)]
    peak = Peak(workers)
    stop, ids = threading.Event(), []

    def traffic() -> None:  # steady mixed traffic: both models, a few jobs a second
        i = 0
        while not stop.wait(0.4) and i < 200:
            ids.append(mx.api.submit(prompt=f"t{i}", model=("mx-d", "mx-e")[i % 2], seed=i)["id"])
            i += 1

    sender = threading.Thread(target=traffic, daemon=True)
    try:
        sender.start()
        wait_for(
            lambda: (
                {bool(_sum(w.samples(), "kiln_model_resident", model="mx-e")) for w in workers}
                == {True, False}
            ),
            timeout=60,
            what="one worker holding mx-e",
        )
        time.sleep(SWAP_WAIT_S)  # settled: from now on, steady
        settled = sum(w.loads() for w in workers)
        time.sleep(3 * SWAP_WAIT_S)
        stop.set()
        sender.join(10)
        jobs = wait_all(mx.api, list(ids))
        after = sum(w.loads() for w in workers)
    finally:
        stop.set()
        peak.stop()
        stop_all([w.proc for w in workers])
    assert {j["status"] for j in jobs} == {"succeeded"}
    assert after - settled <= 2
    assert {j["worker"] for j in jobs if j["model"] == "mx-d"} != {
        j["worker"] for j in jobs if j["model"] == "mx-e"
    }
    assert 0 < peak.bytes <= BUDGET_MB * (1 << 20)  # each worker's budget, read back


def test_a_worker_killed_while_it_loads_a_model_loses_no_job(stack: Stack, mx: Mx) -> None:
    slow = {"KILN_LOAD_DELAY_S": "4"}
    worker = start(stack, mx, ["mx-f", "mx-g"], "--max-resident", "1", env=slow)
    try:
        job = mx.api.submit(prompt="mid-load", model="mx-g", seed=7)
        wait_for(
            lambda: mx.api.get(f"/v1/jobs/{job['id']}").json().get("worker"),
            timeout=30,
            what="the job received by the worker",
        )
        time.sleep(1)  # the engine is loading mx-g now (4 s)
        worker.proc.popen.send_signal(signal.SIGKILL)
        worker.proc.popen.wait(10)
        again = stack.restart(worker.proc)
        done = mx.api.wait(job["id"], timeout=120)
    finally:
        stop_all([p for p in stack.procs if p.name == worker.proc.name])
    assert done["status"] == "succeeded"
    assert done["attempts"] == 2  # sent again once, run once
    assert again.popen is not worker.proc.popen
