"""Each family end to end (API → Celery → worker → S3) with its tiny stand-in."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from harness.http import KilnHTTP, fetch_image
from harness.stack import Stack


@pytest.fixture(scope="module")
def family_workers(stack: Stack) -> Iterator[None]:
    procs = [stack.start_worker(m, wait=False) for m in ("sd15", "sdxl", "flux-schnell")]
    for model, proc in zip(("sd15", "sdxl", "flux-schnell"), procs, strict=True):
        stack.wait_worker_ready(model, proc, timeout=180)
    yield
    for proc in procs:
        proc.stop()


@pytest.mark.parametrize(
    ("model", "extra"),
    [
        ("sd15", {"negative_prompt": "blurry", "guidance_scale": 6.0}),
        ("sdxl", {"negative_prompt": "blurry"}),
        ("flux-schnell", {}),
    ],
)
def test_each_family_makes_a_png(
    api: KilnHTTP, family_workers: None, model: str, extra: dict
) -> None:
    done = api.run(prompt="a red fox", model=model, width=128, height=128, steps=4, seed=3, **extra)
    assert done["status"] == "succeeded", done
    assert fetch_image(done["images"][0]["url"]).size == (128, 128)


def test_flux_takes_no_negative_prompt(api: KilnHTTP) -> None:
    r = api.post(
        "/v1/jobs", json={"prompt": "x", "model": "flux-schnell", "negative_prompt": "blurry"}
    )
    assert r.status_code == 422
    assert "negative_prompt" in r.json()["error"]["fields"]


def test_production_size_on_a_stand_in(api: KilnHTTP, family_workers: None) -> None:
    done = api.run(prompt="a castle", model="sd15", width=1024, height=1024, steps=30, seed=1)
    assert done["status"] == "succeeded", done
    assert fetch_image(done["images"][0]["url"]).size == (1024, 1024)


def test_scheduler_by_name_is_the_one_used(api: KilnHTTP) -> None:
    done = api.run(prompt="a kite", model="tiny-sd", steps=4, scheduler="euler_a", seed=1)
    assert done["status"] == "succeeded"
    assert done["params"]["scheduler"] == "euler_a"
    assert done["batches"][0]["scheduler"] == "EulerAncestralDiscreteScheduler"
    r = api.post("/v1/jobs", json={"prompt": "x", "model": "tiny-sd", "scheduler": "warp"})
    assert r.status_code == 422 and "scheduler" in r.json()["error"]["fields"]


def test_lora_switches_without_reloading(api: KilnHTTP, stack: Stack) -> None:
    job = dict(prompt="a lighthouse", model="tiny-sd", steps=4, seed=11)
    styled_job = {**job, "loras": [{"name": "style", "weight": 1.0}]}

    def pixels(d: dict) -> np.ndarray:
        assert d["status"] == "succeeded", d
        return np.asarray(fetch_image(d["images"][0]["url"]))

    base = pixels(api.run(**job))
    styled = pixels(api.run(**styled_job))
    again = pixels(api.run(**job))
    styled_again = pixels(api.run(**styled_job))
    assert not np.array_equal(base, styled)
    assert np.array_equal(base, again)
    assert np.array_equal(styled, styled_again)

    log = next(p for p in stack.procs if p.name == "worker-tiny-sd").output()
    assert log.count("loaded LoRA style for tiny-sd") == 1

    r = api.post("/v1/jobs", json={**job, "loras": [{"name": "nope"}]})
    assert r.status_code == 422 and "loras" in r.json()["error"]["fields"]
