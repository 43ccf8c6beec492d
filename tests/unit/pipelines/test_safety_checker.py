"""The safety checker: an sd15 option of models.yaml, off by default, loaded by the loader
from the model's own folder when on."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from config.errors import ModelConfigError
from config.models import parse_model
from harness.pipelines import REGISTRY
from pipelines.loader import load_model, pretrained_kwargs
from pipelines.registry import resolve

SD15 = {"name": "sd", "family": "sd15", "source": "stable-diffusion-v1-5/stable-diffusion-v1-5"}


def test_the_option_parses_off_by_default_and_only_for_sd15() -> None:
    assert parse_model(SD15).safety_checker is False
    assert parse_model({**SD15, "safety_checker": True}).safety_checker is True
    with pytest.raises(ModelConfigError, match="safety_checker"):
        parse_model({**SD15, "family": "sdxl", "safety_checker": True})


def test_the_option_reaches_the_from_pretrained_call() -> None:
    off = resolve(parse_model(SD15))
    on = resolve(parse_model({**SD15, "safety_checker": True}))
    source = SD15["source"]
    assert pretrained_kwargs(off, source, torch.float16)["safety_checker"] is None
    kwargs = pretrained_kwargs(on, source, torch.float16)
    assert "safety_checker" not in kwargs and "feature_extractor" not in kwargs
    assert kwargs["requires_safety_checker"] is True


def with_a_tiny_checker(folder: Path) -> None:
    """Add a random-weight safety checker and its image processor to an SD folder, as the
    SD 1.5 repositories ship them (``safety_checker/``, ``feature_extractor/``)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from transformers import CLIPConfig, CLIPImageProcessor

    layers = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4}
    text = {"vocab_size": 1000, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
    config = CLIPConfig(
        text_config={**layers, "num_hidden_layers": 2, **text},
        vision_config={**layers, "num_hidden_layers": 2, "image_size": 32, "patch_size": 4},
        projection_dim=32,
    )
    torch.manual_seed(0)
    StableDiffusionSafetyChecker(config).save_pretrained(folder / "safety_checker")
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder / "feature_extractor")
    index = json.loads((folder / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    index["requires_safety_checker"] = True
    (folder / "model_index.json").write_text(json.dumps(index))


def test_the_loader_loads_the_checker_from_the_model_folder_when_on(
    tiny_models_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "sd-with-checker"
    shutil.copytree(tiny_models_dir / "sd-mini", folder)
    with_a_tiny_checker(folder)
    spec = replace(REGISTRY["tiny-sd"].spec, tiny=None, source=str(folder), loras=())

    off = load_model(resolve(spec), models_dir=tiny_models_dir, device="cpu")
    assert off.pipe.safety_checker is None  # the default, as before

    on = load_model(
        resolve(replace(spec, safety_checker=True)), models_dir=tiny_models_dir, device="cpu"
    )
    assert type(on.pipe.safety_checker).__name__ == "StableDiffusionSafetyChecker"
    assert type(on.pipe.feature_extractor).__name__.startswith("CLIPImageProcessor")
    out = on.pipe("a test", num_inference_steps=1, height=64, width=64, output_type="pil")
    assert len(out.images) == 1 and out.nsfw_content_detected is not None  # it ran
