"""The loader: local folders, options, schedulers by name, LoRAs loaded once and switched."""

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from config.errors import InvalidInput
from harness.pipelines import REGISTRY, generate
from pipelines.families import SCHEDULERS
from pipelines.loader import load_model, resolve_source, warm_up
from pipelines.registry import resolve

FOLDERS = {"tiny-sd": "sd-mini", "sdxl": "sdxl", "flux-schnell": "flux"}
PIPELINES = {
    "tiny-sd": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "flux-schnell": "FluxPipeline",
}


def from_folder(name: str, models_dir: Path, **changes):
    """The registry entry pointed at a plain local folder (no tiny recipe)."""
    spec = REGISTRY[name].spec
    folder = str(models_dir / FOLDERS[name])
    return resolve(replace(spec, tiny=None, source=folder, loras=(), **changes))


@pytest.mark.parametrize("name", list(FOLDERS))
def test_each_family_loads_from_a_local_folder(tiny_models_dir: Path, name: str, caplog) -> None:
    model = from_folder(name, tiny_models_dir)
    with caplog.at_level(logging.INFO, logger="kiln.pipelines"):
        loaded = load_model(model, models_dir=tiny_models_dir, device="cpu")
    assert type(loaded.pipe).__name__ == PIPELINES[name]
    assert loaded.device == "cpu" and loaded.dtype is torch.float32  # fp16/bf16 fall back
    assert loaded.load_time_s > 0
    assert any("loaded " + name in r.getMessage() for r in caplog.records)
    assert loaded.scheduler_name == model.scheduler
    assert type(loaded.pipe.scheduler).__name__ == SCHEDULERS[model.scheduler][0]
    if name == "tiny-sd":
        assert loaded.pipe.safety_checker is None


def test_resolve_source(tiny_models_dir: Path) -> None:
    assert resolve_source(REGISTRY["sd15"], tiny_models_dir) == str(tiny_models_dir / "sd15")
    local = from_folder("sdxl", tiny_models_dir)
    assert resolve_source(local, tiny_models_dir) == str(tiny_models_dir / "sdxl")
    templated = resolve(replace(local.spec, source="{models_dir}/sdxl"))
    assert resolve_source(templated, tiny_models_dir) == str(tiny_models_dir / "sdxl")
    hub = resolve(replace(local.spec, source="stabilityai/stable-diffusion-xl-base-1.0"))
    assert resolve_source(hub, tiny_models_dir) == "stabilityai/stable-diffusion-xl-base-1.0"
    missing = resolve(replace(local.spec, source=str(tiny_models_dir / "nope")))
    with pytest.raises(FileNotFoundError, match="nope"):
        resolve_source(missing, tiny_models_dir)


def test_options_are_applied(tiny_models_dir: Path) -> None:
    model = from_folder(
        "sdxl",
        tiny_models_dir,
        attention="default",
        channels_last=True,
        vae_slicing=True,
        vae_tiling=True,
        upcast_vae=False,
        vae=str(tiny_models_dir / "sdxl"),  # a pipeline folder: its vae/ is used
        compile=True,  # lazy: nothing compiles before warm_up
    )
    loaded = load_model(model, models_dir=tiny_models_dir, device="cpu")
    unet, vae = loaded.pipe.unet, loaded.pipe.vae
    assert {type(p).__name__ for p in unet.attn_processors.values()} == {"AttnProcessor"}
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert vae.use_slicing and vae.use_tiling
    assert vae.config.force_upcast is False
    # Regional by default: the UNet's repeated transformer blocks, compiled in place.
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert blocks and all(b._compiled_call_impl is not None for b in blocks)
    assert unet._compiled_call_impl is None and type(unet).__name__ == "UNet2DConditionModel"
    assert loaded.compiled.what == "UNet2DConditionModel blocks BasicTransformerBlock"


def test_compile_regional_off_compiles_the_whole_denoiser_and_the_vae_decoder(
    tiny_models_dir: Path,
) -> None:
    model = from_folder("sdxl", tiny_models_dir, compile=True, compile_regional=False)
    loaded = load_model(model, models_dir=tiny_models_dir, device="cpu")
    assert loaded.pipe.unet._compiled_call_impl is not None  # compiled in place: still a UNet
    assert loaded.compiled.what == "UNet2DConditionModel and vae.decode"


@pytest.mark.parametrize("name", ["dpmpp_2m_karras", "euler_a", "ddim", "unipc", "euler"])
def test_scheduler_chosen_by_name_is_the_one_used(loaded_models, name: str) -> None:
    loaded = loaded_models("tiny-sd")
    generate(loaded, scheduler=name)
    assert loaded.scheduler_name == name
    assert type(loaded.pipe.scheduler).__name__ == SCHEDULERS[name][0]
    if name == "dpmpp_2m_karras":
        assert loaded.pipe.scheduler.config.use_karras_sigmas is True


def test_schedulers_are_built_once_and_keep_the_model_config(loaded_models) -> None:
    loaded = loaded_models("tiny-sd")
    loaded.set_scheduler("ddim")
    first = loaded.pipe.scheduler
    loaded.set_scheduler("euler")
    loaded.set_scheduler("ddim")
    assert loaded.pipe.scheduler is first
    assert first.config.beta_schedule == "scaled_linear"  # from the model's own config


def test_unknown_or_foreign_scheduler_names_the_field(loaded_models) -> None:
    loaded = loaded_models("tiny-sd")
    for bad in ("nope", "flow_euler"):  # flow matching is not for a UNet model
        with pytest.raises(InvalidInput) as info:
            loaded.set_scheduler(bad)
        assert info.value.fields == {"scheduler": [bad]}


@pytest.mark.parametrize("name", ["tiny-sd", "sdxl", "flux-schnell"])
def test_lora_changes_pixels_and_switching_back_restores_them(loaded_models, name) -> None:
    loaded = loaded_models(name)
    base = generate(loaded)
    styled = generate(loaded, loras=(("style", 1.0),))
    half = generate(loaded, loras=(("style", 0.5),))
    again = generate(loaded)
    styled_again = generate(loaded, loras=(("style", 1.0),))
    assert not np.array_equal(base, styled)
    assert not np.array_equal(styled, half)
    assert np.array_equal(base, again)  # bit-exact: disable_lora, not unfuse
    assert np.array_equal(styled, styled_again)
    assert loaded.lora_loads["style"] == 1  # loaded once, at load time; switched since


def test_unknown_or_repeated_lora_names_the_field(loaded_models) -> None:
    loaded = loaded_models("tiny-sd")
    with pytest.raises(InvalidInput) as info:
        loaded.set_loras((("nope", 1.0),))
    assert info.value.fields == {"loras": ["nope"]}
    with pytest.raises(InvalidInput) as info:
        loaded.set_loras((("style", 1.0), ("style", 0.5)))
    assert "loras" in info.value.fields


def test_stand_in_lora_from_the_models_yaml_template(tiny_models_dir: Path) -> None:
    model = resolve(replace(REGISTRY["tiny-sd"].spec, dtype="fp32"))
    assert "{models_dir}" in model.spec.loras[0].source
    loaded = load_model(model, models_dir=tiny_models_dir, device="cpu")
    assert loaded.lora_loads == {"style": 1}
    assert loaded.active_loras == ()
    assert warm_up(loaded) > 0


class RecordingPipe:
    """Stands in for a compiled pipeline: records what warm_up runs."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, object, int]] = []
        self.adapters: object = None

    def load_lora_weights(self, source, *, weight_name, adapter_name, **kwargs) -> None:
        pass

    def enable_lora(self) -> None:
        pass

    def set_adapters(self, names, adapter_weights) -> None:
        self.adapters = list(zip(names, adapter_weights, strict=True))

    def disable_lora(self) -> None:
        self.adapters = None

    def __call__(self, *, prompt, generator, width, **kwargs) -> None:
        assert len(generator) == len(prompt)
        self.calls.append((len(prompt), self.adapters, width))


@pytest.mark.parametrize("compiled", [False, True])
def test_warm_up_compiles_every_shape_before_the_first_request(compiled: bool) -> None:
    from pipelines.loader import LoadedModel

    model = resolve(replace(REGISTRY["sdxl"].spec, compile=compiled, max_batch=4))
    pipe = RecordingPipe()
    loaded = LoadedModel(model=model, pipe=pipe, device="cpu", dtype=torch.float32, load_time_s=0)
    warm_up(loaded)
    if compiled:  # default size; every batch bucket (1, 2, 4); then with the LoRAs on
        assert pipe.calls == [
            (1, None, 1024),
            (2, None, 1024),
            (4, None, 1024),
            (1, [("style", 1.0)], 1024),
        ]
    else:
        assert pipe.calls == [(1, None, 256)]
    assert pipe.adapters is None and loaded.active_loras == ()


def test_warm_up_compiles_each_listed_size_and_notes_the_shapes_it_made() -> None:
    from pipelines.compiling import key
    from pipelines.loader import LoadedModel

    spec = replace(REGISTRY["sdxl"].spec, compile=True, max_batch=2, compile_sizes=((768, 512),))
    model = resolve(spec)
    pipe = RecordingPipe()
    loaded = LoadedModel(model=model, pipe=pipe, device="cpu", dtype=torch.float32, load_time_s=0)
    warm_up(loaded)
    style = [("style", 1.0)]
    assert pipe.calls == [
        *[(1, None, 1024), (2, None, 1024), (1, style, 1024)],  # the default size
        *[(1, None, 768), (2, None, 768), (1, style, 768)],  # compile_sizes
    ]
    cfg = model.guidance_scale > 1
    assert loaded.compiled.keys == {
        (w, h, cfg, loras) for w, h in ((1024, 1024), (768, 512)) for loras in ((), tuple(style))
    }
    at = lambda w, h, g=model.guidance_scale, loras=(): dict(  # noqa: E731
        width=w, height=h, guidance_scale=g, loras=loras
    )
    assert key(model, **at(768, 512, loras=(("style", 1),))) in loaded.compiled.keys
    assert key(model, **at(512, 512)) not in loaded.compiled.keys  # another size: eager
    assert key(model, **at(1024, 1024, g=1.0)) not in loaded.compiled.keys  # no CFG branch


@pytest.mark.parametrize("name", list(FOLDERS))
def test_bf16_on_the_cpu_when_asked(tiny_models_dir: Path, name: str) -> None:
    """KILN_CPU_DTYPE=bf16: every family loads and generates in bf16, LoRA included (at
    32²: bf16 convolutions on a CPU make tiny-sd's 64² cost seconds a call)."""
    model = REGISTRY[name]
    loaded = load_model(model, models_dir=tiny_models_dir, device="cpu", cpu_dtype="bf16")
    denoiser = getattr(loaded.pipe, "unet", None) or loaded.pipe.transformer
    assert loaded.dtype is torch.bfloat16
    assert next(denoiser.parameters()).dtype is torch.bfloat16
    base = generate(loaded, size=32)
    styled = generate(loaded, size=32, loras=(("style", 1.0),))
    assert np.isfinite(base).all() and base.std() > 0
    assert not np.array_equal(base, styled)
