"""Loading apart from running: open a model once, then switch schedulers and LoRAs.

``load_model`` honours the model entry: family pipeline class, dtype and device,
attention (SDPA by default), fused QKV projections, TF32 for fp32 work on CUDA,
channels_last, VAE slicing/tiling, CPU offload, an fp16-safe VAE and its upcast, and
``torch.compile`` with the entry's mode and backend (``pipelines.compiling``: compiled
by ``warm_up`` at worker start for every listed size and batch bucket, never on a
request). A ``random_init`` entry is built from its architecture's config
straight on the device (``pipelines.fullsize``); a single ``.safetensors`` source goes
through diffusers' single-file loader (``pipelines.single_file``), and every option
after that applies the same way. Every listed LoRA is loaded from disk
once, here; requests only switch adapters and weights.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config.errors import InvalidInput
from config.models import is_checkpoint_path
from pipelines import compiling
from pipelines.devices import is_cuda, pick_device, pick_dtype
from pipelines.families import SCHEDULERS
from pipelines.registry import Model

if TYPE_CHECKING:
    import torch

log = logging.getLogger("kiln.pipelines")
PATH_PREFIXES = ("/", "./", "../", "~")  # a source starting so is a path, never a hub id


@dataclass
class LoadedModel:
    model: Model
    pipe: Any
    device: str
    dtype: torch.dtype
    load_time_s: float
    lora_loads: collections.Counter[str] = field(default_factory=collections.Counter)
    scheduler_name: str = ""
    active_loras: tuple[tuple[str, float], ...] = ()
    models_dir: Path | None = None
    _schedulers: dict[str, Any] = field(default_factory=dict, repr=False)
    _base_scheduler_config: Any = field(default=None, repr=False)
    _derived: dict[str, Any] = field(default_factory=dict, repr=False)
    compiled: compiling.Compiled = field(default_factory=compiling.Compiled)
    dtypes: dict[str, Any] = field(default_factory=dict)  # each component's, as loaded

    def remember_dtypes(self) -> None:
        """Note each component's dtype as loaded, for :meth:`restore_dtypes`."""
        self.dtypes = {
            name: module.dtype
            for name, module in self.pipe.components.items()
            if getattr(module, "dtype", None) is not None and hasattr(module, "to")
        }

    def restore_dtypes(self) -> list[str]:
        """Put every component back in its dtype as loaded; returns those that were not.
        A failed call can leave one elsewhere: SDXL upcasts its VAE to fp32 for the
        decode and casts it back only after a decode that succeeded."""
        moved = []
        for name, dtype in self.dtypes.items():
            module = self.pipe.components.get(name)
            if module is not None and module.dtype != dtype:
                module.to(dtype=dtype)
                moved.append(name)
        if moved:
            log.warning("%s: put %s back in their dtype", self.model.name, ", ".join(moved))
        return moved

    def pipe_for(self, mode: str) -> Any:
        """The pipeline for a request mode: ``text`` is the loaded one; ``img2img`` and
        ``inpaint`` are built from it once with ``from_pipe`` (the same components, so
        no second copy of the weights and the active LoRAs apply), with its scheduler."""
        if mode == "text":
            return self.pipe
        if mode not in self._derived:
            import diffusers

            cls_name = self.model.family.mode_class(mode)
            if not cls_name:
                raise InvalidInput(
                    f"{self.model.name} takes no `image` ({mode})", fields={"image": [mode]}
                )
            self._derived[mode] = getattr(diffusers, cls_name).from_pipe(self.pipe)
            self._derived[mode].set_progress_bar_config(disable=True)
            log.info("built the %s pipeline of %s", mode, self.model.name)
        derived = self._derived[mode]
        derived.scheduler = self.pipe.scheduler
        return derived

    @property
    def denoiser(self) -> Any:
        """The UNet, or the transformer (Flux)."""
        transformer = getattr(self.pipe, "transformer", None)
        return transformer if transformer is not None else getattr(self.pipe, "unet", None)

    def set_scheduler(self, name: str) -> None:
        """Switch by request-facing name (``families.SCHEDULERS``); each instance is built
        once from the model's own scheduler config. ``""``: keep the current one."""
        if not name or name == self.scheduler_name:
            return
        allowed = self.model.schedulers
        if name not in SCHEDULERS or (allowed and name not in allowed):
            raise InvalidInput(
                f"scheduler {name!r} is not available for {self.model.name}; "
                f"choose from {', '.join(allowed)}",
                fields={"scheduler": [name]},
            )
        if name not in self._schedulers:
            import diffusers

            if self._base_scheduler_config is None:
                self._base_scheduler_config = self.pipe.scheduler.config
            cls_name, extra = SCHEDULERS[name]
            cls = getattr(diffusers, cls_name)
            self._schedulers[name] = cls.from_config(self._base_scheduler_config, **extra)
        self.pipe.scheduler = self._schedulers[name]
        self.scheduler_name = name

    def set_loras(self, loras: tuple[tuple[str, float], ...]) -> None:
        """Activate exactly these ``(name, weight)`` adapters; ``()`` turns LoRA off
        (bit-exact base model). Loaded from disk once; switching costs a few ms."""
        loras = tuple((str(n), float(w)) for n, w in loras)
        names = [n for n, _ in loras]
        for n in names:
            if self.model.spec.lora(n) is None:
                known = ", ".join(lo.name for lo in self.model.spec.loras) or "none"
                raise InvalidInput(
                    f"unknown LoRA {n!r} for model {self.model.name} (known: {known})",
                    fields={"loras": [n]},
                )
        if len(set(names)) != len(names):
            raise InvalidInput(f"LoRA listed twice: {names}", fields={"loras": names})
        if dict(loras) == dict(self.active_loras):
            return
        for n in names:
            if n not in self.lora_loads:
                self.load_lora(n)
        if loras:
            self.pipe.enable_lora()
            self.pipe.set_adapters(names, adapter_weights=[w for _, w in loras])
        elif self.lora_loads:
            self.pipe.disable_lora()
        self.active_loras = loras

    def load_lora(self, name: str) -> None:
        """Load one listed adapter from disk (or the hub) under its own name."""
        spec = self.model.spec.lora(name)
        if spec is None:
            raise InvalidInput(f"unknown LoRA {name!r}", fields={"loras": [name]})
        source, weight_name = self._lora_source(spec.source), spec.weight_name
        path = Path(source)
        kwargs: dict[str, Any] = {}
        if path.is_file():
            source, weight_name = str(path.parent), path.name
        if path.exists():
            kwargs["local_files_only"] = True
        elif source.startswith(PATH_PREFIXES):
            raise FileNotFoundError(f"LoRA {name!r} of {self.model.name}: {source} not found")
        t0 = time.perf_counter()
        self.pipe.load_lora_weights(source, weight_name=weight_name, adapter_name=name, **kwargs)
        self.lora_loads[name] += 1
        log.info("loaded LoRA %s for %s in %.3fs", name, self.model.name, time.perf_counter() - t0)

    def _lora_source(self, source: str) -> str:
        """``{models_dir}`` is the tiny models folder; a stand-in's LoRA is built if missing."""
        if "{models_dir}" not in source or self.models_dir is None:
            return str(Path(source).expanduser()) if source.startswith("~") else source
        path = Path(source.format(models_dir=self.models_dir))
        recipe = self.model.spec.tiny
        if recipe and path.suffix == ".safetensors" and not path.exists():
            from pipelines.tiny import make_tiny_lora

            make_tiny_lora(recipe, path.parent, name=path.stem)
        return str(path)


def resolve_source(model: Model, models_dir: Path) -> str:
    """Tiny recipe → ``models_dir/<recipe>`` (built when missing); a local folder; a hub id."""
    spec = model.spec
    if spec.tiny:
        from pipelines.tiny import make_tiny

        return str(make_tiny(spec.tiny, Path(models_dir) / spec.tiny))
    source = spec.source.replace("{models_dir}", str(models_dir))
    path = Path(source).expanduser()
    if path.exists():
        return str(path)
    if source.startswith(PATH_PREFIXES) or is_checkpoint_path(source):
        what = "checkpoint file" if is_checkpoint_path(source) else "source folder"
        raise FileNotFoundError(f"model {spec.name}: {what} {source} not found")
    return source  # a hub id: the only case that may touch the network


def pretrained_kwargs(model: Model, source: str, dtype: Any) -> dict[str, Any]:
    """``from_pretrained`` options of the entry. sd15: the safety checker stays out
    unless the entry asks for it (``safety_checker: true``); then the pipeline loads it,
    and its image processor, from the same source as the rest of the weights."""
    spec = model.spec
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": Path(source).exists()}
    if spec.variant:
        kwargs["variant"] = spec.variant
    if spec.revision:
        kwargs["revision"] = spec.revision
    if model.family.name == "sd15":
        if spec.safety_checker:
            kwargs["requires_safety_checker"] = True
        else:
            kwargs.update(
                safety_checker=None, feature_extractor=None, requires_safety_checker=False
            )
    return kwargs


def _quiet() -> None:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()


def load_model(
    model: Model, *, device: str = "", models_dir: Path, cpu_dtype: str = "fp32"
) -> LoadedModel:
    """Open the model's pipeline on ``device`` with the entry's options; log the time.

    ``cpu_dtype`` (fp32 | bf16 | auto) is the precision of half-precision entries on
    the CPU (:func:`~pipelines.devices.pick_dtype`).
    """
    import diffusers
    import torch

    _quiet()
    spec, t0 = model.spec, time.perf_counter()
    device = pick_device(device)
    dtype = pick_dtype(spec.dtype, device, cpu_dtype=cpu_dtype)
    if spec.random_init:
        source, pipe = f"random weights ({spec.random_init})", _build_random(model, dtype, device)
    else:
        source = resolve_source(model, models_dir)
        kwargs = pretrained_kwargs(model, source, dtype)
        if spec.vae:
            kwargs["vae"] = _load_vae(spec.vae, dtype, models_dir, spec.variant)
        if is_checkpoint_path(source):
            from pipelines.single_file import load_single_file

            for name in ("dtype", "local_files_only", "variant", "revision"):
                kwargs.pop(name, None)  # the file is local; its configs say their own
            pipe = load_single_file(model, source, models_dir=models_dir, dtype=dtype, extra=kwargs)
        else:
            cls = getattr(diffusers, model.family.pipeline_class)
            pipe = cls.from_pretrained(source, **kwargs)
    pipe.set_progress_bar_config(disable=True)

    loaded = LoadedModel(
        model=model, pipe=pipe, device=device, dtype=dtype, load_time_s=0.0, models_dir=models_dir
    )
    loaded._base_scheduler_config = pipe.scheduler.config
    loaded.set_scheduler(model.scheduler)
    _apply_options(loaded)
    for lora in spec.loras:  # once, now: no request pays for it
        loaded.load_lora(lora.name)
    if spec.loras:
        pipe.disable_lora()  # loading made the last adapter active
    if spec.compile:  # after the LoRAs: adapters go into the compiled graph
        loaded.compiled.what = compiling.compile_model(model, pipe, loaded.denoiser, device)
    loaded.remember_dtypes()
    if is_cuda(device):
        torch.cuda.synchronize(device)
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


def _build_random(model: Model, dtype: torch.dtype, device: str) -> Any:
    """The entry's architecture with random weights, made on ``device`` (no files)."""
    from pipelines import fullsize

    arch = model.spec.random_init or ""
    if arch not in fullsize.ARCHITECTURES:
        known = ", ".join(fullsize.ARCHITECTURES)
        raise ValueError(f"model {model.name}: random_init {arch!r} is not one of {known}")
    if fullsize.family_of(arch) != model.family.name:
        raise ValueError(
            f"model {model.name}: random_init {arch!r} is not of family {model.family.name}"
        )
    return fullsize.build(arch, dtype, device)


def _load_vae(source: str, dtype: torch.dtype, models_dir: Path, variant: str | None) -> Any:
    """An fp16-safe VAE override: a VAE folder, a pipeline folder (its ``vae/``), or a hub
    id; the entry's weight ``variant`` where the folder has that variant's files."""
    from diffusers import AutoencoderKL

    source = source.replace("{models_dir}", str(models_dir))
    path = Path(source).expanduser()
    if path.exists():
        sub = "vae" if (path / "vae" / "config.json").exists() else None  # a pipeline folder
        folder = path / sub if sub else path
        has = variant is not None and any(folder.glob(f"*.{variant}.safetensors"))
        return AutoencoderKL.from_pretrained(
            str(path),
            subfolder=sub,
            dtype=dtype,
            local_files_only=True,
            variant=variant if has else None,
        )
    return AutoencoderKL.from_pretrained(source, dtype=dtype)


def _apply_options(loaded: LoadedModel) -> None:
    import torch

    spec, pipe, denoiser = loaded.model.spec, loaded.pipe, loaded.denoiser
    if spec.attention == "default":
        if hasattr(denoiser, "set_default_attn_processor"):
            denoiser.set_default_attn_processor()
        else:
            log.info("attention=default: %s has no such processor; SDPA", type(denoiser).__name__)
    elif spec.attention != "sdpa":
        raise ValueError(f"model {spec.name}: attention must be sdpa or default")
    vae = getattr(pipe, "vae", None)
    if vae is not None and spec.upcast_vae is not None and "force_upcast" in vae.config:
        vae.register_to_config(force_upcast=spec.upcast_vae)  # SDXL decodes fp16 in fp32 if set
    if spec.fuse_qkv:  # one matmul for q, k and v in every attention of the denoiser
        denoiser.fuse_qkv_projections()
    if is_cuda(loaded.device):  # on and off both: a process may load several entries
        set_tf32(spec.tf32)
    if spec.cpu_offload and is_cuda(loaded.device):
        pipe.enable_model_cpu_offload(device=loaded.device)
    else:
        pipe.to(loaded.device)
    if loaded.device == "cpu":
        own_aligned_memory(pipe)
    if spec.channels_last:
        for module in (denoiser, vae):
            if module is not None:
                module.to(memory_format=torch.channels_last)
    if vae is not None and spec.vae_slicing:
        vae.enable_slicing()
    if vae is not None and spec.vae_tiling:
        vae.enable_tiling()


CPU_ALIGN = 64  # bytes: the alignment the CPU allocator gives, and SIMD kernels prefer


def own_aligned_memory(pipe: Any) -> int:
    """Copy every CPU weight that still lies unaligned in a loaded file's buffer into
    memory of its own; returns how many. The CPU kernels picked depend on alignment
    (an unaligned weight gave ~1e-6 other floats), so the same weights give the same
    pixels whichever file or layout they were read from."""
    import torch

    moved = 0
    with torch.no_grad():
        for module in pipe.components.values():
            if not isinstance(module, torch.nn.Module):
                continue
            for t in [*module.parameters(), *module.buffers()]:
                if t.device.type == "cpu" and t.data_ptr() % CPU_ALIGN:
                    t.data = t.data.clone()
                    moved += 1
    return moved


def set_tf32(on: bool) -> None:
    """fp32 matmuls and cuDNN convolutions in TF32 (process-wide; CUDA only)."""
    import torch

    precision = "tf32" if on else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision  # type: ignore[attr-defined]


def set_torch_threads(threads: int) -> None:
    """Intra-op threads of this process (0: torch's default, one per core). Call it in
    the thread that runs torch, before the first torch work."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
        log.info("torch uses %d intra-op thread(s)", threads)


def warm_up(loaded: LoadedModel, *, steps: int = 2) -> float:
    """Pay one-off costs before the first request; returns seconds.

    Without ``compile``: one small call (≤ 256² on the CPU; the default size on CUDA,
    where kernels are picked per shape). With ``compile``: the shapes of
    :func:`~pipelines.compiling.warm_calls` (every compiled size at every batch bucket,
    LoRAs off and on), noted in ``compiled.keys``; any other shape runs eager later
    (:func:`~pipelines.compiling.serving`).
    """
    import torch

    model, t0 = loaded.model, time.perf_counter()
    compiled, m = model.spec.compile, model.family.size_multiple
    full = compiled or is_cuda(loaded.device)
    cap = 1 << 30 if full else 256  # the default size: the shape requests use
    size = (max(m, min(model.width, cap) // m * m), max(m, min(model.height, cap) // m * m))
    kwargs: dict[str, Any] = {
        "num_inference_steps": steps,
        "guidance_scale": model.guidance_scale,
        "output_type": "pil",
    }
    if model.family.max_sequence_length:
        limit = loaded.pipe.tokenizer_2.model_max_length
        kwargs["max_sequence_length"] = min(model.family.max_sequence_length, limit)
    calls = compiling.warm_calls(model, size) if compiled else [(*size, 1, ())]
    before = loaded.active_loras
    with torch.inference_mode():
        for w, h, n, loras in calls:
            loaded.set_loras(loras)
            gens = [torch.Generator(loaded.device).manual_seed(i) for i in range(n)]
            loaded.pipe(prompt=["warm up"] * n, generator=gens, width=w, height=h, **kwargs)
            if compiled:  # the key serving looks each call up by
                loaded.compiled.keys.add(
                    compiling.key(
                        model, width=w, height=h, guidance_scale=model.guidance_scale, loras=loras
                    )
                )
    loaded.set_loras(before)
    took = time.perf_counter() - t0
    log.info("warmed up %s in %.2fs (compiled: %s)", model.name, took, loaded.compiled.what or "no")
    return took
