"""The loader: local folders, schedulers by name, LoRAs loaded once and switched."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from config.errors import InvalidInput
from pipelines.batch import Item, Params, run_batch
from pipelines.loader import load_model, resolve_source
from pipelines.registry import resolve
from tests.unit.pipelines.conftest import REGISTRY


def pixels(loaded, *, scheduler: str = "euler", loras=(), seed: int = 7) -> np.ndarray:
    params = Params(width=64, height=64, steps=2, guidance_scale=5.0, scheduler=scheduler,
                    loras=loras)
    (image,) = run_batch(loaded, params, [Item("a red fox", None, seed)])
    return np.asarray(image)


def test_a_local_folder_loads_like_a_hub_id(tiny_models_dir: Path) -> None:
    spec = replace(REGISTRY["sd15"].spec, tiny=None, source=str(tiny_models_dir / "sd15"))
    model = resolve(spec)
    assert resolve_source(model, tiny_models_dir) == str(tiny_models_dir / "sd15")
    loaded = load_model(model, models_dir=tiny_models_dir, device="cpu")
    assert type(loaded.pipe).__name__ == "StableDiffusionPipeline"
    assert loaded.device == "cpu" and str(loaded.dtype) == "torch.float32"
    assert loaded.load_time_s > 0


@pytest.mark.parametrize("name", ["dpmpp_2m_karras", "euler_a", "ddim", "unipc", "euler"])
def test_scheduler_chosen_by_name_is_the_one_used(loaded_models, name: str) -> None:
    loaded = loaded_models("tiny-sd")
    pixels(loaded, scheduler=name)
    assert loaded.scheduler_name == name
    expected = {"dpmpp_2m_karras": "DPMSolverMultistepScheduler",
                "euler_a": "EulerAncestralDiscreteScheduler", "ddim": "DDIMScheduler",
                "unipc": "UniPCMultistepScheduler", "euler": "EulerDiscreteScheduler"}[name]
    assert type(loaded.pipe.scheduler).__name__ == expected
    if name == "dpmpp_2m_karras":
        assert loaded.pipe.scheduler.config.use_karras_sigmas is True


@pytest.mark.parametrize("name", ["tiny-sd", "sdxl", "flux-schnell"])
def test_lora_changes_pixels_and_switching_back_restores_them(loaded_models, name) -> None:
    loaded = loaded_models(name)
    scheduler = loaded.model.scheduler
    base = pixels(loaded, scheduler=scheduler)
    styled = pixels(loaded, scheduler=scheduler, loras=(("style", 1.0),))
    again = pixels(loaded, scheduler=scheduler)
    styled_again = pixels(loaded, scheduler=scheduler, loras=(("style", 1.0),))
    assert not np.array_equal(base, styled)
    assert np.array_equal(base, again)
    assert np.array_equal(styled, styled_again)
    assert loaded.lora_loads["style"] == 1  # loaded once, at load time; switched since


def test_unknown_lora_names_the_field(loaded_models) -> None:
    with pytest.raises(InvalidInput) as info:
        loaded_models("tiny-sd").set_loras((("nope", 1.0),))
    assert "loras" in info.value.fields
