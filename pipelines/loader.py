"""Loading (``setup``) apart from running: open a model once, switch schedulers and LoRAs.

``load_model`` honours the model entry: family pipeline class, dtype and device,
SDPA attention, channels_last, VAE slicing/tiling, CPU offload, an fp16-safe VAE,
and ``torch.compile`` of the denoiser and the VAE decoder (compiled by
``warm_up`` at worker start, never on the first request). Every listed LoRA is
loaded once here; requests only switch adapters.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.errors import InvalidInput
from pipelines.devices import pick_device, pick_dtype
from pipelines.families import SCHEDULERS
from pipelines.registry import Model

log = logging.getLogger("kiln.pipelines")


@dataclass
class LoadedModel:
    model: Model
    pipe: Any
    device: str
    dtype: Any
    load_time_s: float
    lora_loads: collections.Counter[str] = field(default_factory=collections.Counter)
    scheduler_name: str = ""
    models_dir: Path | None = None
    active_loras: tuple[tuple[str, float], ...] = ()
    _schedulers: dict[str, Any] = field(default_factory=dict)
    _base_scheduler_config: Any = None

    @property
    def denoiser(self) -> Any:
        return getattr(self.pipe, "transformer", None) or self.pipe.unet

    def set_scheduler(self, name: str) -> None:
        """Switch the pipeline's scheduler by its request-facing name."""
        if not name or name == self.scheduler_name:
            return
        if name not in SCHEDULERS:
            raise InvalidInput(f"unknown scheduler {name!r}", fields={"scheduler": [name]})
        if name not in self._schedulers:
            import diffusers

            cls_name, extra = SCHEDULERS[name]
            cls = getattr(diffusers, cls_name)
            self._schedulers[name] = cls.from_config(self._base_scheduler_config, **extra)
        self.pipe.scheduler = self._schedulers[name]
        self.scheduler_name = name

    def load_lora(self, name: str) -> None:
        spec = self.model.spec.lora(name)
        if spec is None:
            raise InvalidInput(
                f"unknown LoRA {name!r} for {self.model.name}", fields={"loras": [name]}
            )
        source, weight_name = lora_source(spec.source, self), spec.weight_name
        p = Path(source)
        if p.suffix == ".safetensors" and p.exists():
            source, weight_name = str(p.parent), p.name
        t0 = time.perf_counter()
        self.pipe.load_lora_weights(source, weight_name=weight_name, adapter_name=name)
        self.lora_loads[name] += 1
        log.info("loaded LoRA %s for %s in %.3fs (load #%d)", name, self.model.name,
                 time.perf_counter() - t0, self.lora_loads[name])

    def set_loras(self, loras: tuple[tuple[str, float], ...]) -> None:
        """Activate exactly these adapters with these weights (none: LoRA off)."""
        loras = tuple(loras)
        if loras == self.active_loras:
            return
        for name, _ in loras:
            if name not in self.lora_loads:
                self.load_lora(name)
        if loras:
            self.pipe.enable_lora()
            self.pipe.set_adapters([n for n, _ in loras], adapter_weights=[w for _, w in loras])
        elif self.lora_loads:
            self.pipe.disable_lora()
        self.active_loras = loras


def lora_source(source: str, loaded: LoadedModel) -> str:
    """``{models_dir}`` in a LoRA source is the tiny models folder; built when missing."""
    if "{models_dir}" not in source or loaded.models_dir is None:
        return source
    path = Path(source.format(models_dir=loaded.models_dir))
    recipe = loaded.model.spec.tiny
    if not path.exists() and recipe and path.suffix == ".safetensors":
        from pipelines.tiny import make_tiny_lora

        make_tiny_lora(recipe, path.parent, name=path.stem)
    return str(path)


def resolve_source(model: Model, models_dir: Path) -> str:
    """Tiny recipe → its folder (built when missing); a local path; or a hub id."""
    spec = model.spec
    if spec.tiny:
        from pipelines.tiny import make_tiny

        return str(make_tiny(spec.tiny, Path(models_dir) / spec.tiny))
    return spec.source


def _quiet() -> None:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()


def load_model(model: Model, *, device: str = "", models_dir: Path) -> LoadedModel:
    """Open the model's pipeline on ``device`` with the entry's options."""
    import diffusers
    import torch

    _quiet()
    spec, t0 = model.spec, time.perf_counter()
    device = pick_device(device)
    dtype = pick_dtype(spec.dtype, device)
    source = resolve_source(model, models_dir)
    local = Path(source).exists()
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": local}
    if spec.variant:
        kwargs["variant"] = spec.variant
    if spec.revision:
        kwargs["revision"] = spec.revision
    if model.family.name == "sd15":
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if spec.vae:
        kwargs["vae"] = diffusers.AutoencoderKL.from_pretrained(
            spec.vae, dtype=dtype, local_files_only=Path(spec.vae).exists()
        )
    cls = getattr(diffusers, model.family.pipeline_class)
    pipe = cls.from_pretrained(source, **kwargs)
    pipe.set_progress_bar_config(disable=True)

    loaded = LoadedModel(
        model=model, pipe=pipe, device=device, dtype=dtype, load_time_s=0.0, models_dir=models_dir
    )
    _apply_options(loaded)
    loaded._base_scheduler_config = pipe.scheduler.config
    loaded.scheduler_name = ""
    if model.scheduler:
        loaded.set_scheduler(model.scheduler)
    for lora in spec.loras:
        loaded.load_lora(lora.name)
    if spec.loras:
        pipe.disable_lora()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    loaded.load_time_s = time.perf_counter() - t0
    log.info(
        "loaded %s (%s) from %s on %s as %s in %.2fs",
        model.name,
        model.family.name,
        source,
        device,
        str(dtype).removeprefix("torch."),
        loaded.load_time_s,
    )
    return loaded


def _apply_options(loaded: LoadedModel) -> None:
    import torch

    spec, pipe = loaded.model.spec, loaded.pipe
    denoiser = loaded.denoiser
    if spec.attention == "default":
        denoiser.set_default_attn_processor()
    if spec.upcast_vae is not None and hasattr(pipe.vae.config, "force_upcast"):
        pipe.vae.register_to_config(force_upcast=spec.upcast_vae)
    if spec.cpu_offload and loaded.device.startswith("cuda"):
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(loaded.device)
    if spec.channels_last:
        denoiser.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if spec.vae_slicing:
        pipe.vae.enable_slicing()
    if spec.vae_tiling:
        pipe.vae.enable_tiling()
    if spec.compile:
        mode = "max-autotune-no-cudagraphs" if loaded.device.startswith("cuda") else None
        if hasattr(pipe, "transformer") and pipe.transformer is not None:
            pipe.transformer = torch.compile(pipe.transformer, mode=mode, fullgraph=False)
        else:
            pipe.unet = torch.compile(pipe.unet, mode=mode, fullgraph=False)
        pipe.vae.decode = torch.compile(pipe.vae.decode, mode=mode, fullgraph=False)


def warm_up(loaded: LoadedModel, *, steps: int = 2) -> float:
    """One call at the default size (compiles when ``compile`` is on); returns seconds."""
    import torch

    model, t0 = loaded.model, time.perf_counter()
    kwargs: dict[str, Any] = {
        "prompt": ["warm up"],
        "num_inference_steps": steps,
        "width": model.width if model.spec.compile else min(model.width, 256),
        "height": model.height if model.spec.compile else min(model.height, 256),
        "generator": [torch.Generator(loaded.device).manual_seed(0)],
        "output_type": "pil",
    }
    if model.family.max_sequence_length:
        kwargs["max_sequence_length"] = min(
            model.family.max_sequence_length, loaded.pipe.tokenizer_2.model_max_length
        )
    if model.family.guidance:
        kwargs["guidance_scale"] = model.guidance_scale
    m = model.family.size_multiple
    kwargs["width"] -= kwargs["width"] % m
    kwargs["height"] -= kwargs["height"] % m
    with torch.inference_mode():
        loaded.pipe(**kwargs)
    took = time.perf_counter() - t0
    log.info("warmed up %s in %.2fs", model.name, took)
    return took
