"""Tiny models of each family, loaded once per session, for the pipeline tests.

The tiny folders themselves come from the session fixture ``tiny_models_dir``
(tests/conftest.py: ``pipelines.tiny.make_all`` into a ``tmp_path_factory`` folder,
once per session, shared with the integration tests).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from config.models import LoraSpec
from config.settings import DEFAULT_MODELS_FILE
from pipelines.registry import Model, Registry, resolve

# Tiny models gain nothing from intra-op threads, and with other processes on the cores
# (the integration stack's workers, a parallel run) OpenMP spin-waits made 2 threads
# 10-30x slower than 1 here. OMP_NUM_THREADS, when set, wins.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)

REGISTRY = Registry.from_file(DEFAULT_MODELS_FILE)
# The tiny stand-in each family's tests use.
FAMILY_MODELS = {"sd15": "tiny-sd", "sdxl": "sdxl", "flux": "flux-schnell"}
LORA_RECIPE = {"tiny-sd": "sd-mini", "sd15": "sd15", "sdxl": "sdxl", "flux-schnell": "flux"}


def model_with_lora(name: str, models_dir: Path) -> Model:
    """The registry entry, in fp32, with its tiny ``style`` LoRA at an absolute path."""
    model = REGISTRY[name]
    lora = LoraSpec(
        name="style",
        source=str(models_dir / "loras" / LORA_RECIPE[name] / "style.safetensors"),
    )
    return resolve(replace(model.spec, loras=(lora,), dtype="fp32"))


@pytest.fixture(scope="session")
def loaded_models(tiny_models_dir: Path) -> Callable[[str], Any]:
    """``loaded_models(name)``: that model loaded on the CPU once per session."""
    from pipelines.loader import load_model

    cache: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in cache:
            model = model_with_lora(name, tiny_models_dir)
            cache[name] = load_model(model, models_dir=tiny_models_dir, device="cpu")
        return cache[name]

    return get


def generate(
    loaded: Any,
    *,
    seed: int = 7,
    scheduler: str = "",
    loras: tuple[tuple[str, float], ...] = (),
    size: int = 64,
    steps: int = 2,
) -> Any:
    """One image as a float array, straight through the pipeline (no batcher)."""
    import torch

    loaded.set_scheduler(scheduler or loaded.model.scheduler)
    loaded.set_loras(loras)
    kwargs: dict[str, Any] = dict(
        prompt=["a red fox"],
        width=size,
        height=size,
        num_inference_steps=steps,
        guidance_scale=loaded.model.guidance_scale,
        generator=[torch.Generator("cpu").manual_seed(seed)],
        output_type="np",
    )
    if loaded.model.family.max_sequence_length:
        kwargs["max_sequence_length"] = 16
    with torch.inference_mode():
        return loaded.pipe(**kwargs).images[0]
