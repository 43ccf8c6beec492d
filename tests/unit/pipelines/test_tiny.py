"""Tiny stand-ins: built offline, deterministic, opened like any local model."""

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipelines.tiny import PIPELINES, RECIPES, make_tiny, make_tiny_lora


def test_every_recipe_and_its_lora_is_on_disk(tiny_models_dir: Path) -> None:
    for recipe in RECIPES:
        assert (tiny_models_dir / recipe / "model_index.json").exists()
        assert (tiny_models_dir / "loras" / recipe / "style.safetensors").exists()
    leftovers = [p for p in tiny_models_dir.rglob(".*")]
    assert not leftovers, "temporary build folders were left behind"


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_loads_offline_and_makes_a_64px_image(tiny_models_dir: Path, recipe: str) -> None:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_models_dir / recipe, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == PIPELINES[recipe]
    assert pipe.vae_scale_factor == (2 if recipe == "sd-mini" else 8)
    kwargs = {"max_sequence_length": 16} if recipe == "flux" else {}
    with torch.inference_mode():
        (image,) = pipe(
            prompt="a red fox",
            width=64,
            height=64,
            num_inference_steps=2,
            generator=torch.Generator("cpu").manual_seed(0),
            **kwargs,
        ).images
    assert image.size == (64, 64)
    assert np.asarray(image).std() > 0  # noise, not a blank image


def test_flux_stand_in_keeps_the_real_shapes(tiny_models_dir: Path) -> None:
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    folder = tiny_models_dir / "flux"
    tr = FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    assert tr.config.in_channels == 4 * vae.config.latent_channels == 64
    assert sum(tr.config.axes_dims_rope) == tr.config.attention_head_dim
    assert tr.config.guidance_embeds is False  # schnell


def test_make_tiny_is_idempotent(tiny_models_dir: Path) -> None:
    path = tiny_models_dir / "sd15"
    before = (path / "model_index.json").stat().st_mtime_ns
    assert make_tiny("sd15", path) == path
    assert (path / "model_index.json").stat().st_mtime_ns == before


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(next((folder / "unet").glob("*.safetensors")))


def test_same_recipe_same_weights_and_overwrite_rebuilds(
    tiny_models_dir: Path, tmp_path: Path
) -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    out = make_tiny("sd-mini", tmp_path / "m")
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)  # the caller's RNG is left alone
    stamp = (out / "model_index.json").stat().st_mtime_ns
    make_tiny("sd-mini", out, overwrite=True)
    assert (out / "model_index.json").stat().st_mtime_ns != stamp
    shared, again = weights(tiny_models_dir / "sd-mini"), weights(out)
    assert shared.keys() == again.keys()
    assert all(torch.equal(shared[k], again[k]) for k in shared)


def test_racing_builders_leave_one_complete_folder(tmp_path: Path) -> None:
    out = tmp_path / "raced"
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(make_tiny("sd-mini", out))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [out, out]
    assert (out / "model_index.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raced"]


def test_tiny_lora_is_not_a_no_op(tiny_models_dir: Path) -> None:
    path = tiny_models_dir / "loras" / "flux" / "style.safetensors"
    state = load_file(path)
    b = [v for k, v in state.items() if "lora_B" in k or "lora.up" in k]
    assert b and all(v.abs().sum() > 0 for v in b)
    assert make_tiny_lora("flux", path.parent) == path  # idempotent


def test_unknown_recipe_names_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sd3"):
        make_tiny("sd3", tmp_path / "x")
    assert not (tmp_path / "x").exists()
