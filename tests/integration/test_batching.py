"""Jobs from independent callers share pipeline calls; incompatible ones never do."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from app.auth import hash_key, new_key
from harness.http import KilnHTTP
from harness.stack import SECRETS, Stack


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
        for proc in stack.procs[before:]:
            proc.stop()
    assert all(d["status"] == "succeeded" for d in done), done
    sizes = [b["size"] for d in done for b in d["batches"]]
    print(f"four callers, budget of 2 images per call: call sizes {sizes}")
    assert max(sizes) <= 2 and sum(sizes) == 8
