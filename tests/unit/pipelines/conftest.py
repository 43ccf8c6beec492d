"""Tiny models of each family, loaded once per session, for the pipeline tests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from config.models import LoraSpec
from config.settings import DEFAULT_MODELS_FILE
from pipelines.registry import Registry, resolve

REGISTRY = Registry.from_file(DEFAULT_MODELS_FILE)
# The tiny stand-in each family's tests use.
FAMILY_MODELS = {"sd15": "tiny-sd", "sdxl": "sdxl", "flux": "flux-schnell"}
LORA_RECIPE = {"tiny-sd": "sd-mini", "sd15": "sd15", "sdxl": "sdxl", "flux-schnell": "flux"}


def model_with_lora(name: str, models_dir: Path):
    model = REGISTRY[name]
    lora = LoraSpec(
        name="style",
        source=str(models_dir / "loras" / LORA_RECIPE[name] / "style.safetensors"),
    )
    return resolve(replace(model.spec, loras=(lora,), dtype="fp32"))


@pytest.fixture(scope="session")
def loaded_models(tiny_models_dir: Path) -> dict:
    from pipelines.loader import load_model

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_model(model_with_lora(name, tiny_models_dir),
                                     models_dir=tiny_models_dir, device="cpu")
        return cache[name]

    return get  # type: ignore[return-value]
