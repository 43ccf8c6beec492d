"""Model entries of ``models.yaml`` as frozen data (no torch here).

An entry names a model, its family and where its weights are. Everything else
has a default from the family (``pipelines.families``), so five lines of YAML
add a model:

    - name: my-sdxl
      family: sdxl
      source: stabilityai/stable-diffusion-xl-base-1.0   # hub id or local folder
      dtype: fp16
      max_batch: 8
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from config.errors import ModelConfigError

DTYPES = ("fp16", "bf16", "fp32")
# torch.compile's modes (named on CUDA; the CPU compiles with the default mode) and the
# backends a model may name ("eager" traces with dynamo and runs the graphs as they are:
# what the CPU smoke runs of the GPU proof use, as inductor takes minutes there).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_BACKENDS = ("inductor", "eager", "aot_eager")


@dataclass(frozen=True, kw_only=True)
class Defaults:
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None


@dataclass(frozen=True, kw_only=True)
class Limits:
    min_size: int | None = None
    max_size: int | None = None
    max_steps: int | None = None
    max_n: int = 8
    max_prompt_chars: int = 2000
    min_guidance: float = 0.0
    max_guidance: float = 30.0
    max_pixels_per_batch: int = 8 * 1024 * 1024
    max_input_pixels: int = 4096 * 4096  # an init image or mask, as declared in its header
    max_input_bytes: int = 16 * 1024 * 1024  # an init image or mask, encoded
    max_loras: int = 3


@dataclass(frozen=True, kw_only=True)
class LoraSpec:
    name: str
    source: str  # local folder or .safetensors file, or hub id
    weight_name: str | None = None
    default_weight: float = 1.0


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    name: str
    family: str  # sd15 | sdxl | flux-schnell | flux-dev | generic
    source: str = ""  # local folder, hub id, or one .safetensors checkpoint (original layout)
    # A single-file source's component configs and tokenizers: a diffusers folder or hub
    # id (none: the family's reference repository on the hub, from its cache when offline).
    config: str | None = None
    tiny: str | None = None  # stand-in recipe built by `kiln models make-tiny`
    # An architecture of pipelines.fullsize (sdxl, flux-schnell, or their -smoke sizes)
    # built with random weights straight on the device: no files (the GPU proof).
    random_init: str | None = None
    revision: str | None = None
    variant: str | None = None  # e.g. "fp16" weight files on the hub
    dtype: str = "fp16"
    scheduler: str | None = None
    schedulers: tuple[str, ...] = ()
    defaults: Defaults = field(default_factory=Defaults)
    limits: Limits = field(default_factory=Limits)
    max_batch: int = 4
    max_wait_ms: int = 50
    compile: bool = False
    compile_mode: str = "default"  # on CUDA; see COMPILE_MODES (max-autotune: tuned once, cached)
    compile_backend: str = "inductor"
    # Sizes compiled at warm-up besides the default one; any other size runs eager.
    compile_sizes: tuple[tuple[int, int], ...] = ()
    compile_regional: bool = True  # the denoiser's repeated blocks only (diffusers' regional)
    batch_buckets: tuple[int, ...] = ()  # pad batches up to these sizes; see ``buckets``
    fuse_qkv: bool = False  # one q/k/v matmul per attention (not with LoRAs)
    tf32: bool = True  # CUDA: fp32 matmuls and convolutions in TF32
    channels_last: bool = False  # UNet and VAE convolutions in NHWC
    attention: str = "sdpa"  # sdpa | default
    vae_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False
    upcast_vae: bool | None = None  # SDXL fp16: None = decide from the VAE config
    vae: str | None = None  # fp16-safe VAE override (folder or hub id)
    loras: tuple[LoraSpec, ...] = ()
    # sd15 only: run diffusers' safety checker (from the source's safety_checker/ and
    # feature_extractor/ folders); flagged images come back black. Off by default.
    safety_checker: bool = False
    soft_time_limit_s: int = 300
    time_limit_s: int = 360
    enabled: bool = True
    description: str = ""

    @property
    def stand_in(self) -> bool:
        return self.tiny is not None or self.random_init is not None

    @property
    def buckets(self) -> tuple[int, ...]:
        """Batch sizes a call is padded up to (``()``: none). ``batch_buckets`` when set;
        with ``compile``, powers of two up to ``max_batch`` (and ``max_batch``), so that
        each size has one compiled graph, made at warm-up, instead of a recompile."""
        if self.batch_buckets:
            return self.batch_buckets
        if not self.compile:
            return ()
        sizes = {1 << i for i in range(self.max_batch.bit_length()) if 1 << i <= self.max_batch}
        return tuple(sorted(sizes | {self.max_batch}))

    def lora(self, name: str) -> LoraSpec | None:
        return next((lo for lo in self.loras if lo.name == name), None)


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        raise ModelConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ModelConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    try:
        return cls(**dict(data))
    except TypeError as exc:
        raise ModelConfigError(f"{where}: {exc}") from None


def parse_model(raw: Mapping[str, Any], *, base_dir: Path | None = None) -> ModelSpec:
    if not isinstance(raw, Mapping):
        raise ModelConfigError(f"models.yaml: each model must be a mapping, got {raw!r}")
    name = raw.get("name")
    if (
        not isinstance(name, str)
        or not name
        or not name.replace("-", "").replace(".", "").replace("_", "").isalnum()
    ):
        raise ModelConfigError(
            f"models.yaml: name must be letters, digits, '-', '_', '.': {name!r}"
        )
    where = f"models.yaml model {name!r}"
    data = dict(raw)
    data["defaults"] = _build(Defaults, data.get("defaults"), f"{where} defaults")
    data["limits"] = _build(Limits, data.get("limits"), f"{where} limits")
    data["loras"] = tuple(
        _build(LoraSpec, lo, f"{where} loras[{i}]") for i, lo in enumerate(data.get("loras") or [])
    )
    data["schedulers"] = tuple(data.get("schedulers") or ())
    data["batch_buckets"] = _buckets(data.get("batch_buckets"), where)
    data["compile_sizes"] = _sizes(data.get("compile_sizes"), where)
    spec: ModelSpec = _build(ModelSpec, data, where)
    if spec.dtype not in DTYPES:
        raise ModelConfigError(f"{where}: dtype must be one of {DTYPES}, got {spec.dtype!r}")
    if not spec.source and not spec.tiny and not spec.random_init:
        raise ModelConfigError(
            f"{where}: give a source (folder or hub id), a tiny recipe or random_init"
        )
    if spec.max_batch < 1 or spec.max_wait_ms < 0:
        raise ModelConfigError(f"{where}: max_batch must be >= 1 and max_wait_ms >= 0")
    if spec.compile_mode not in COMPILE_MODES:
        raise ModelConfigError(
            f"{where}: compile_mode must be one of {COMPILE_MODES}, got {spec.compile_mode!r}"
        )
    if spec.compile_backend not in COMPILE_BACKENDS:
        raise ModelConfigError(
            f"{where}: compile_backend must be one of {COMPILE_BACKENDS}, "
            f"got {spec.compile_backend!r}"
        )
    if spec.batch_buckets and spec.batch_buckets[-1] < spec.max_batch:
        raise ModelConfigError(
            f"{where}: batch_buckets {list(spec.batch_buckets)} must reach max_batch "
            f"{spec.max_batch}"
        )
    if spec.fuse_qkv and spec.loras:
        raise ModelConfigError(f"{where}: fuse_qkv would bypass the LoRAs; use one or the other")
    if spec.safety_checker and spec.family != "sd15":
        raise ModelConfigError(f"{where}: safety_checker is an sd15 option (diffusers has none)")
    if spec.time_limit_s <= spec.soft_time_limit_s:
        raise ModelConfigError(f"{where}: time_limit_s must exceed soft_time_limit_s")
    if spec.config and not is_checkpoint_path(spec.source):
        raise ModelConfigError(f"{where}: config names the configs of a single-file source only")
    if is_checkpoint_path(spec.source) and (spec.variant or spec.revision):
        raise ModelConfigError(
            f"{where}: variant and revision pick files of a folder or hub repository; "
            "a single-file source is one file"
        )
    # Relative local paths are relative to the models file.
    if base_dir is not None and spec.source.startswith(("./", "../")):
        spec = replace(spec, source=str((base_dir / spec.source).resolve()))
    if base_dir is not None and spec.config and spec.config.startswith(("./", "../")):
        spec = replace(spec, config=str((base_dir / spec.config).resolve()))
    return spec


CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".pkl")


def is_checkpoint_path(source: str) -> bool:
    """Whether a source names one weights file (a single-file checkpoint)."""
    return source.lower().endswith(CHECKPOINT_SUFFIXES)


def _sizes(raw: Any, where: str) -> tuple[tuple[int, int], ...]:
    """``compile_sizes``: a list of ``[width, height]`` pairs of positive integers."""
    if raw is None:
        return ()
    pairs: list[Any] = list(raw) if isinstance(raw, list | tuple) else [None]
    if not all(
        isinstance(p, list | tuple)
        and len(p) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in p)
        for p in pairs
    ):
        raise ModelConfigError(f"{where}: compile_sizes must be a list of [width, height] pairs")
    return tuple((int(w), int(h)) for w, h in pairs)


def _buckets(raw: Any, where: str) -> tuple[int, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple) or not all(
        isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in raw
    ):
        raise ModelConfigError(f"{where}: batch_buckets must be a list of positive integers")
    if list(raw) != sorted(set(raw)):
        raise ModelConfigError(f"{where}: batch_buckets must rise: {list(raw)}")
    return tuple(raw)


def _read_entries(path: Path, *, one: bool = False) -> list[Any]:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ModelConfigError(f"models file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ModelConfigError(f"{path}: not valid YAML: {exc}") from None
    if one and isinstance(doc, Mapping) and "models" not in doc:
        return [doc]  # a drop-in: one entry, as a mapping
    items = doc.get("models") if isinstance(doc, Mapping) else doc
    if not isinstance(items, list) or not items:
        raise ModelConfigError(f"{path}: expected a non-empty list under 'models:'")
    return items


def dropin_files(dropin_dir: Path | None) -> list[Path]:
    """The drop-in entry files (``*.yaml``), by name; none when the folder is absent."""
    if dropin_dir is None or not Path(dropin_dir).is_dir():
        return []
    return sorted(p for p in Path(dropin_dir).glob("*.yaml") if not p.name.startswith("."))


def load_models(path: Path, *, dropin_dir: Path | None = None) -> dict[str, ModelSpec]:
    """Read ``models.yaml`` and then each drop-in file of ``dropin_dir`` (one entry each,
    written by ``kiln models add``); returns the enabled models by name, in that order.
    A name given twice, in the file or across the two, is an error naming both places."""
    out: dict[str, ModelSpec] = {}
    where: dict[str, Path] = {}
    sources = [(Path(path), _read_entries(path))]
    sources += [(p, _read_entries(p, one=True)) for p in dropin_files(dropin_dir)]
    for file, items in sources:
        for raw in items:
            spec = parse_model(raw, base_dir=file.parent)
            if spec.name in where:
                raise ModelConfigError(
                    f"{file}: model {spec.name!r} is already listed in {where[spec.name]}"
                )
            where[spec.name] = file
            if spec.enabled:
                out[spec.name] = spec
    return out


def dropin_path(dropin_dir: Path, name: str) -> Path:
    return Path(dropin_dir) / f"{name}.yaml"


def write_dropin(dropin_dir: Path, entry: Mapping[str, Any]) -> Path:
    """Write one entry as ``<dropin_dir>/<name>.yaml`` (checked first; atomic rename)."""
    spec = parse_model(entry)
    folder = Path(dropin_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = dropin_path(folder, spec.name)
    tmp = folder / f".{spec.name}.yaml.tmp"
    tmp.write_text(
        "# Added by `kiln models add`; `kiln models remove "
        + spec.name
        + "` removes it.\n"
        + yaml.safe_dump(dict(entry), sort_keys=False)
    )
    tmp.replace(target)
    return target
