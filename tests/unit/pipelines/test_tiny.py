"""Tiny stand-ins: built offline, opened like any local model, real VAE scale factor."""

from pathlib import Path

import pytest

from pipelines.tiny import RECIPES, make_tiny


def test_every_recipe_is_on_disk(tiny_models_dir: Path) -> None:
    for recipe in RECIPES:
        assert (tiny_models_dir / recipe / "model_index.json").exists()
        assert (tiny_models_dir / "loras" / recipe / "style.safetensors").exists()


def test_make_tiny_is_idempotent(tiny_models_dir: Path) -> None:
    path = tiny_models_dir / "sd15"
    before = (path / "model_index.json").stat().st_mtime_ns
    assert make_tiny("sd15", path) == path
    assert (path / "model_index.json").stat().st_mtime_ns == before


def test_unknown_recipe_names_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sd3"):
        make_tiny("sd3", tmp_path / "x")


@pytest.mark.parametrize("name", ["sd15", "sdxl", "flux-schnell"])
def test_stand_ins_keep_the_real_vae_scale_factor(loaded_models, name: str) -> None:
    loaded = loaded_models(name)
    assert loaded.pipe.vae_scale_factor == 8


def test_mini_is_the_64px_recipe(loaded_models) -> None:
    assert loaded_models("tiny-sd").pipe.vae_scale_factor == 2
