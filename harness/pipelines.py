"""Tiny models of each family for the pipeline tests: the registry entries they use, a
LoRA on each, and one image straight through a loaded pipeline (no batcher)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from config.models import LoraSpec
from config.settings import DEFAULT_MODELS_FILE
from pipelines.registry import Model, Registry, resolve

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


def raise_oom_above(module: Any, attr: str, *, rows: int) -> tuple[list[int], Callable[[], None]]:
    """Make ``module.attr`` raise ``torch.OutOfMemoryError`` for inputs of more than
    ``rows`` rows, where a full GPU raises it; returns the row counts it refused and a
    function that undoes it."""
    import torch

    real = getattr(module, attr)
    refused: list[int] = []

    def call(x: Any, *args: Any, **kwargs: Any) -> Any:
        if x.shape[0] > rows:
            refused.append(x.shape[0])
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(x, *args, **kwargs)

    setattr(module, attr, call)
    return refused, lambda: setattr(module, attr, real)
