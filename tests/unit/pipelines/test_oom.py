"""Out-of-memory recovery on a real pipeline: tiny SDXL in fp16 (the dtype whose VAE the
stock pipeline upcasts for the decode), with ``torch.OutOfMemoryError`` raised where a GPU
would raise it: in ``vae.decode`` after the upcast, and in the denoiser."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from harness.pipelines import REGISTRY, raise_oom_above
from pipelines.batch import Item, Params, run_batch
from pipelines.engine import Engine, Request
from pipelines.loader import load_model
from pipelines.registry import resolve

SIZE, STEPS = 32, 2


@pytest.fixture(scope="module")
def sdxl_fp16(tiny_models_dir: Path) -> Any:
    """Tiny SDXL in fp16 on the CPU (a worker there would pick fp32: this is the GPU's
    dtype, so that the VAE upcast happens as it does on a GPU)."""
    model = resolve(
        replace(REGISTRY["sdxl"].spec, loras=(), dtype="fp32", max_batch=2, max_wait_ms=5000)
    )
    loaded = load_model(model, models_dir=tiny_models_dir, device="cpu")
    loaded.pipe.to(dtype=torch.float16)
    loaded.dtype = torch.float16
    loaded.remember_dtypes()
    assert loaded.pipe.vae.config.force_upcast  # the stock pipeline decodes in fp32
    return loaded


def params_of(loaded: Any) -> Params:
    return Params(
        width=SIZE,
        height=SIZE,
        steps=STEPS,
        guidance_scale=loaded.model.guidance_scale,
        scheduler=loaded.model.scheduler,
    )


def through_engine(loaded: Any, seeds: list[int]) -> tuple[list[np.ndarray], Engine]:
    engine = Engine(loaded.model, models_dir=Path("."), load=lambda: loaded)
    engine.start()
    engine.wait_ready(30)
    try:
        futures = [
            engine.submit(
                Request(id=f"r{s}", prompt=f"a red fox {s}", seeds=[s], params=params_of(loaded))
            )
            for s in seeds
        ]
        images = [np.asarray(f.result(120).images[0], dtype=np.int16) for f in futures]
    finally:
        engine.stop()
    return images, engine


@pytest.mark.parametrize(
    ("where", "attr", "limit"),
    [("vae", "decode", 1), ("unet", "forward", 2)],  # the UNet sees 2 rows an image (CFG)
    ids=["vae.decode", "denoiser"],
)
def test_an_oom_splits_the_batch_and_the_next_batch_runs_in_the_models_dtype(
    sdxl_fp16: Any, where: str, attr: str, limit: int
) -> None:
    loaded, seeds = sdxl_fp16, [3, 4]
    items = [Item(f"a red fox {s}", None, s) for s in seeds]
    unsplit = [np.asarray(im, dtype=np.int16) for im in run_batch(loaded, params_of(loaded), items)]

    refused, undo = raise_oom_above(getattr(loaded.pipe, where), attr, rows=limit)
    try:
        split, engine = through_engine(loaded, seeds)
    finally:
        undo()
    assert refused, "the injected out-of-memory error never fired"
    assert engine.stats["oom_splits"] == 1 and engine.stats["failures"] == 0
    for a, b in zip(unsplit, split, strict=True):  # each seed its image (±1: batch kernels)
        assert np.abs(a - b).max() <= 1
    assert loaded.pipe.vae.dtype == torch.float16  # put back after the failed decode
    assert {m.dtype for m in (loaded.pipe.unet, loaded.pipe.text_encoder)} == {torch.float16}

    after = run_batch(loaded, params_of(loaded), items)  # the next batch, as loaded
    assert all(np.asarray(im).std() > 0 for im in after)
    assert loaded.pipe.vae.dtype == torch.float16
