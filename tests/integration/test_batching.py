"""Jobs from independent callers share pipeline calls; incompatible ones never do."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from app.auth import hash_key, new_key
from harness.http import KilnHTTP
from harness.stack import SECRETS, Stack, stop_all, wait_for
from tasks.jobs import bookkeeping as bk
from tasks.jobs.store import JobStore


def test_compatible_jobs_end_in_fewer_pipeline_calls(api: KilnHTTP) -> None:
    jobs = [dict(prompt=f"a red fox, take {i}", model="tiny-sd", steps=6, seed=i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        submitted = list(pool.map(lambda j: api.submit(**j), jobs))
    done = [api.wait(j["id"]) for j in submitted]
    assert all(d["status"] == "succeeded" for d in done)
    batch_ids = {d["batch_id"] for d in done}
    assert len(batch_ids) < len(done), "every job ran alone"
    assert max(d["batch_size"] for d in done) > 1


def test_incompatible_shapes_are_never_mixed(api: KilnHTTP) -> None:
    jobs = [
        dict(
            prompt=f"a kite {i}",
            model="tiny-sd",
            steps=4,
            seed=i,
            width=64 if i % 2 else 96,
            height=64 if i % 2 else 96,
        )
        for i in range(6)
    ]
    with ThreadPoolExecutor(6) as pool:
        submitted = list(pool.map(lambda j: api.submit(**j), jobs))
    done = [api.wait(j["id"]) for j in submitted]
    by_batch: dict[str, set[int]] = {}
    for d in done:
        assert d["status"] == "succeeded"
        by_batch.setdefault(d["batch_id"], set()).add(d["params"]["width"])
    assert all(len(widths) == 1 for widths in by_batch.values())


def test_four_callers_at_the_per_job_limit_never_exceed_the_batch_budget(
    stack: Stack, tmp_path: Path
) -> None:
    """A model whose budget is two 64x64 images per call; four keys each send a job of
    two such images within one gathering window. The records show every call's size."""
    budget = 64 * 64 * 2
    models = tmp_path / "models.yaml"
    models.write_text(
        "models:\n"
        "  - {name: tiny-budget, family: sd15, tiny: sd-mini, dtype: fp32, max_batch: 8,\n"
        "     max_wait_ms: 1500, defaults: {width: 64, height: 64, steps: 2},\n"
        f"     limits: {{min_size: 32, max_size: 512, max_pixels_per_batch: {budget}}}}}\n"
    )
    keys = {f"caller{i}": new_key() for i in range(4)}
    SECRETS.extend(keys.values())
    env = {
        "KILN_MODELS_FILE": str(models),
        "KILN_AUTH": "",
        "KILN_API_KEYS": ",".join(f"{n}:{hash_key(k)}:generate+read" for n, k in keys.items()),
    }
    before = len(stack.procs)
    try:
        stack.start_worker("tiny-budget", env=env)
        url = stack.start_api(env=env)
        callers = [KilnHTTP(url, headers={"Authorization": f"Bearer {k}"}) for k in keys.values()]
        job = dict(prompt="at the limit", model="tiny-budget", n=2)
        with ThreadPoolExecutor(4) as pool:
            submitted = list(pool.map(lambda c: c.submit(**job, seed=7), callers))
        done = [c.wait(j["id"]) for c, j in zip(callers, submitted, strict=True)]
    finally:
        stop_all(stack.procs[before:])
    assert all(d["status"] == "succeeded" for d in done), done
    sizes = [b["size"] for d in done for b in d["batches"]]
    print(f"four callers, budget of 2 images per call: call sizes {sizes}")
    assert max(sizes) <= 2 and sum(sizes) == 8


def test_status_is_the_truth_under_a_burst_larger_than_one_batch(
    stack: Stack, tmp_path: Path
) -> None:
    """A worker of a model with ``max_batch`` 2 and four task threads, its device held by
    a long job, gets a burst of eight jobs: three wait inside the worker, five in the
    broker. All eight are ``queued``, positions 1-8 in submission order; none is
    ``running`` before its batch is on the device, and then each reports step 1 within
    about a step; they finish in the order of their positions, give or take one batch."""
    max_batch, burst, steps, threads = 2, 8, 6, 4
    models = tmp_path / "models.yaml"
    models.write_text(
        "models:\n"
        "  - {name: tiny-status, family: sd15, tiny: sd-mini, dtype: fp32,\n"
        f"     max_batch: {max_batch}, max_wait_ms: 100,\n"
        f"     defaults: {{width: 64, height: 64, steps: {steps}}},\n"
        "     limits: {min_size: 32, max_size: 512, max_steps: 1000}}\n"
    )
    env = {"KILN_MODELS_FILE": str(models)}
    store = JobStore(stack.env["KILN_REDIS_URL"])
    before = len(stack.procs)
    try:
        stack.start_worker("tiny-status", env=env, args=("--concurrency", str(threads)))
        api = KilnHTTP(stack.start_api(env=env))
        # 1. A job that holds the device until it is canceled (other steps: never batched
        #    with the burst).
        blocker = api.submit(prompt="hold the device", model="tiny-status", steps=1000)
        wait_for(lambda: _view(api, blocker["id"])["status"] == "running", timeout=60, what="run")

        # 2. The burst: every job waits, in the order it came.
        jobs = [api.submit(prompt=f"burst {i}", model="tiny-status", seed=i) for i in range(burst)]
        ids = [j["id"] for j in jobs]
        assert [j["queue_position"] for j in jobs] == list(range(1, burst + 1))
        assert all(j["eta_s"] > 0 for j in jobs)
        in_worker = threads - 1  # one task thread holds the blocker
        wait_for(
            lambda: sum(bool(store.field(i, "worker")) for i in ids) == in_worker,
            timeout=60,
            what="jobs received by the worker",
        )
        views = [_view(api, i) for i in ids]
        assert [v["status"] for v in views] == ["queued"] * burst
        assert [v["started_at"] for v in views] == [None] * burst
        assert [v["queue_position"] for v in views] == list(range(1, burst + 1))
        etas = [v["eta_s"] for v in views]
        assert etas == sorted(etas) and etas[0] > 0
        held = bk.held_jobs(store.redis, "tiny-status")
        assert len([i for i in ids if i in held]) == in_worker  # the reaper's to send again

        # 3. Free the device and watch the burst run (read newest first, so that positions
        #    read a moment apart still compare: they only ever go down).
        freed_at = time.time()
        assert api.delete(f"/v1/jobs/{blocker['id']}").json()["was"] == "running"
        seen: list[list[dict]] = []
        deadline = time.monotonic() + 180
        while not all(v["status"] in ("succeeded", "failed", "canceled") for v in views):
            assert time.monotonic() < deadline, views
            views = [_view(api, i) for i in reversed(ids)][::-1]
            seen.append(views)
            time.sleep(0.02)
    finally:
        stop_all(stack.procs[before:])

    assert [v["status"] for v in views] == ["succeeded"] * burst, views
    for snapshot in seen:
        for v in snapshot:
            if v["status"] == "queued":
                assert v["started_at"] is None and v["eta_s"] > 0
            elif v["status"] == "running":
                assert v["started_at"] is not None and v["queue_position"] is None
                assert v["eta_s"] is not None
        positions = [v["queue_position"] for v in snapshot if v["status"] == "queued"]
        assert positions == sorted(set(positions)) and all(p >= 1 for p in positions)
    # None ran while the device was held, though three waited inside the worker; and a
    # job's started_at is when its batch began: the same for every job of a batch.
    assert all(v["started_at"] >= freed_at for v in views)
    by_batch: dict[str, set[float]] = {}
    for v in views:
        by_batch.setdefault(v["batch_id"], set()).add(v["started_at"])
    assert all(len(starts) == 1 for starts in by_batch.values()), by_batch

    # Finish order follows the positions given at submit time, give or take one batch.
    finished = sorted(range(burst), key=lambda k: views[k]["completed_at"])
    for rank, k in enumerate(finished):
        assert abs(rank - (jobs[k]["queue_position"] - 1)) <= max_batch, finished

    # Running at step 0 no longer than its first step: step 1 is reported within about
    # one step (the job's own pipeline time per step, with a step and 0.2 s of slack for
    # a shared CPU) of the moment its batch began.
    for job_id, view in zip(ids, views, strict=True):
        events = store.events(job_id)
        types = [t for _, t, _ in events]
        assert types.index("received") < types.index("started") < types.index("progress")
        first_step = next(int(e.split("-")[0]) / 1000 for e, t, _ in events if t == "progress")
        step_s = view["run_s"] / steps
        gap = first_step - view["started_at"]
        print(f"{job_id[:8]}: step 1 written {gap:.3f}s after its batch began, {step_s:.3f}s/step")
        assert gap <= 2 * step_s + 0.2, (gap, step_s)


def _view(api: KilnHTTP, job_id: str) -> dict:
    return api.get(f"/v1/jobs/{job_id}").json()
