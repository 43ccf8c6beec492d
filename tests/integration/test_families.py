"""Each family end to end (API → Celery → worker → S3) with its tiny stand-in."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from harness.hold import device_held
from harness.http import KilnHTTP, fetch_image
from harness.stack import Stack, stop_all


@pytest.fixture(scope="module")
def family_workers(stack: Stack) -> Iterator[None]:
    procs = [stack.start_worker(m, wait=False) for m in ("sd15", "sdxl", "flux-schnell")]
    for model, proc in zip(("sd15", "sdxl", "flux-schnell"), procs, strict=True):
        stack.wait_worker_ready(model, proc, timeout=180)
    yield
    stop_all(procs)


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
    # The size is what is tested: two steps run the UNet and the VAE at 1024² as thirty do.
    done = api.run(prompt="a castle", model="sd15", width=1024, height=1024, steps=2, seed=1)
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


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("model", ["sd15", "sdxl", "flux-schnell"])
def test_img2img_and_inpainting_end_to_end(
    stack: Stack, api: KilnHTTP, family_workers: None, model: str
):
    first = api.run(prompt="a red barn", model=model, width=128, height=128, steps=3, seed=5)
    assert first["status"] == "succeeded", first
    original = np.asarray(fetch_image(first["images"][0]["url"]).convert("RGB"))

    # img2img from the finished job's output, no upload: same size, redrawn.
    redrawn = api.run(
        prompt="a blue barn", model=model, image={"job": first["id"]}, strength=0.7, steps=3, seed=6
    )
    assert redrawn["status"] == "succeeded", redrawn
    assert redrawn["params"]["mode"] == "img2img" and redrawn["params"]["strength"] == 0.7
    out = fetch_image(redrawn["images"][0]["url"])
    assert out.size == (128, 128) and not np.array_equal(np.asarray(out.convert("RGB")), original)

    # The same seed gives the same pixels batched with three other img2img jobs (a job
    # holds the device until the worker has received the four, so they wait together).
    same = dict(
        prompt="a blue barn", model=model, image={"job": first["id"]}, strength=0.7, steps=3
    )
    # flux-schnell allows 50 steps at most: a larger image keeps its hold as long.
    size, steps = (256, 50) if model == "flux-schnell" else (128, 150)
    with device_held(api, stack, model=model, size=size, steps=steps) as sent:
        with ThreadPoolExecutor(4) as pool:
            burst = list(pool.map(lambda s: api.submit(**same, seed=s), [6, 40, 41, 42]))
        sent.extend(j["id"] for j in burst)
    batched = [api.wait(j["id"]) for j in burst]
    assert all(b["status"] == "succeeded" for b in batched), batched
    assert batched[0]["batch_size"] > 1, "the img2img jobs did not share a call"
    mate = np.asarray(fetch_image(batched[0]["images"][0]["url"]).convert("RGB")).astype(int)
    alone = np.asarray(out.convert("RGB")).astype(int)
    assert np.abs(mate - alone).max() <= 1

    # Inpainting: only the white square is redrawn; every other pixel is the input's.
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (32, 32, 96, 96))
    painted = api.run(
        prompt="a window",
        model=model,
        image={"job": first["id"], "index": 0},
        mask=data_url(mask),
        steps=3,
        seed=7,
    )
    assert painted["status"] == "succeeded", painted
    assert painted["params"]["mode"] == "inpaint"
    pixels = np.asarray(fetch_image(painted["images"][0]["url"]).convert("RGB"))
    keep = np.asarray(mask) == 0
    assert np.array_equal(pixels[keep], original[keep])
    assert not np.array_equal(pixels[~keep], original[~keep])
