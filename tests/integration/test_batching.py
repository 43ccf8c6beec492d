"""Jobs from independent callers share pipeline calls; incompatible ones never do."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from harness.http import KilnHTTP


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
