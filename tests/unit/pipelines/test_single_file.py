"""Single-file checkpoints: the tiny stand-ins written in their family's original layout
load through the loader with the same weights and pixels as their folders; another
family's file and a pickle are refused, naming the file and why."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from config.errors import CheckpointError
from config.models import ModelSpec
from harness.pipelines import generate
from pipelines.checkpoints import CONVERT_HINT, check_checkpoint, detect_family, read_checkpoint
from pipelines.loader import load_model
from pipelines.registry import resolve

# recipe → (family, the folder entry's name in harness REGISTRY terms)
FAMILIES = {"sd15": "sd15", "sdxl": "sdxl", "flux": "flux-schnell"}


def checkpoint(models_dir: Path, recipe: str) -> Path:
    return models_dir / "checkpoints" / f"{recipe}.safetensors"


def entry(recipe: str, **fields: object) -> ModelSpec:
    return ModelSpec(name=f"file-{recipe}", family=FAMILIES[recipe], dtype="fp32", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("recipe", list(FAMILIES))
def test_the_header_alone_tells_the_family(tiny_models_dir: Path, recipe: str) -> None:
    ckpt = read_checkpoint(checkpoint(tiny_models_dir, recipe))
    assert ckpt.family == FAMILIES[recipe]
    prefix = {"sd15": "cond_stage_model.", "sdxl": "conditioner.embedders.1.", "flux": "model."}
    assert any(k.startswith(prefix[recipe]) for k in ckpt.keys)
    assert not any(k.startswith(("unet.", "transformer.", "text_encoder.")) for k in ckpt.keys)


@pytest.mark.parametrize("recipe", list(FAMILIES))
def test_a_file_loads_the_weights_and_pixels_of_its_folder(
    tiny_models_dir: Path, recipe: str
) -> None:
    folder = tiny_models_dir / recipe
    from_file = resolve(
        entry(recipe, source=str(checkpoint(tiny_models_dir, recipe)), config=str(folder))
    )
    from_folder = resolve(entry(recipe, source=str(folder)))
    a = load_model(from_file, models_dir=tiny_models_dir, device="cpu")
    b = load_model(from_folder, models_dir=tiny_models_dir, device="cpu")
    for name, module in b.pipe.components.items():
        if not hasattr(module, "state_dict"):
            continue
        mine = a.pipe.components[name].state_dict()
        theirs = module.state_dict()
        assert set(mine) == set(theirs), name
        assert all(torch.equal(mine[k].reshape(v.shape), v) for k, v in theirs.items()), name
    assert np.array_equal(generate(a, seed=5), generate(b, seed=5))


def test_loader_options_apply_to_a_file(tiny_models_dir: Path) -> None:
    """VAE override, img2img from the loaded pipe, and a LoRA, as with a folder."""
    folder = tiny_models_dir / "sd15"
    spec = entry(
        "sd15",
        source=str(checkpoint(tiny_models_dir, "sd15")),
        config=str(folder),
        vae=str(folder),
    )
    from config.models import LoraSpec

    lora = LoraSpec(name="style", source=str(tiny_models_dir / "loras/sd15/style.safetensors"))
    loaded = load_model(
        resolve(replace(spec, loras=(lora,))), models_dir=tiny_models_dir, device="cpu"
    )
    assert type(loaded.pipe_for("img2img")).__name__ == "StableDiffusionImg2ImgPipeline"
    assert not np.array_equal(generate(loaded), generate(loaded, loras=(("style", 1.0),)))


def test_another_familys_file_is_refused_naming_the_file_and_both_families(
    tiny_models_dir: Path,
) -> None:
    sdxl = checkpoint(tiny_models_dir, "sdxl")
    with pytest.raises(CheckpointError) as err:
        check_checkpoint(sdxl, "sd15")
    assert str(sdxl) in str(err.value) and "sd15" in str(err.value) and "sdxl" in str(err.value)
    wrong = resolve(entry("sd15", source=str(sdxl), config=str(tiny_models_dir / "sd15")))
    with pytest.raises(
        CheckpointError, match="family sd15 was given, but the file's keys are sdxl"
    ):
        load_model(wrong, models_dir=tiny_models_dir, device="cpu")


def test_a_pickle_is_refused_with_the_reason_and_the_way_to_convert(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, ckpt)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(ckpt)
    message = str(err.value)
    assert str(ckpt) in message and "runs any code" in message and CONVERT_HINT in message
    disguised = tmp_path / "model.safetensors"  # a pickle by its bytes, whatever its name
    disguised.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="pickle"):
        read_checkpoint(disguised)
    with pytest.raises(CheckpointError, match="pickle"):  # refused by name in models.yaml too
        resolve(entry("sd15", source=str(ckpt)))


def test_not_safetensors_and_no_family_are_clear_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_checkpoint(junk)
    with pytest.raises(CheckpointError, match="a folder, not a checkpoint file"):
        read_checkpoint(tmp_path)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"cond_stage_model.model.token_embedding.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(CheckpointError, match="no family Kiln serves"):
        check_checkpoint(other)
    assert detect_family(["double_blocks.0.x", "guidance_in.in_layer.weight"]) == "flux-dev"
    assert detect_family(["model.diffusion_model.double_blocks.0.x"]) == "flux-schnell"


def test_the_flux_file_reads_back_with_plain_diffusers(tiny_models_dir: Path) -> None:
    """Outside Kiln: diffusers' single-file loader reads the file's VAE and text encoders
    with the stand-in folder as config (the transformer: see pipelines.single_file)."""
    from diffusers import FluxPipeline

    from pipelines.single_file import _flux_transformer

    folder = str(tiny_models_dir / "flux")
    ckpt = read_checkpoint(checkpoint(tiny_models_dir, "flux"))
    transformer = _flux_transformer(ckpt, folder, torch.float32, True)
    pipe = FluxPipeline.from_single_file(
        str(ckpt.path), config=folder, local_files_only=True, transformer=transformer
    )
    ref = FluxPipeline.from_pretrained(folder, local_files_only=True)
    vae, ref_vae = pipe.vae.state_dict(), ref.vae.state_dict()
    assert all(torch.equal(vae[k].reshape(v.shape), v) for k, v in ref_vae.items())
    assert (
        json.loads((tiny_models_dir / "flux" / "model_index.json").read_text())["_class_name"]
        == "FluxPipeline"
    )
