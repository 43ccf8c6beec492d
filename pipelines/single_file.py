"""Open a single-file checkpoint with diffusers' single-file loader.

``Pipeline.from_single_file(file, config=<folder or hub id>, local_files_only=...)``
reads the weights from the file and the component configs and tokenizers from
``config``. Before that, the file's header is checked against the entry's family
(:mod:`pipelines.checkpoints`: a file of another family, or a pickle, never loads).
The parts a file does not hold (a Black Forest Labs Flux file is the transformer alone)
are loaded from ``config``'s own weights. A Flux transformer is read with Kiln's own
table (:func:`pipelines.original_layout.flux_from_original`), split by the sizes of its
config: diffusers' reader assumes FLUX.1's width (3072), so a smaller transformer of
the same architecture would not load.

A local ``config`` makes no network call at all; a hub id is fetched like any hub
source (from the cache only, under ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

from pipelines.checkpoints import KINDS, PARTS, Checkpoint, check_checkpoint
from pipelines.registry import Model

log = logging.getLogger("kiln.pipelines")
# The family's reference repository: the configs of a single-file entry without `config:`.
DEFAULT_CONFIGS = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "flux-schnell": "black-forest-labs/FLUX.1-schnell",
    "flux-dev": "black-forest-labs/FLUX.1-dev",
}


def config_source(model: Model, models_dir: Path) -> str:
    """The entry's ``config`` (``{models_dir}`` filled in, a local path made absolute),
    or its family's reference repository."""
    raw = model.spec.config or DEFAULT_CONFIGS.get(model.family.name, "")
    if not raw:
        raise ValueError(f"model {model.name}: give `config:` for a single-file source")
    raw = raw.replace("{models_dir}", str(models_dir))
    path = Path(raw).expanduser()
    if path.exists():
        return str(path)
    if raw.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"model {model.name}: config folder {raw} not found")
    return raw  # a hub id: the operator's choice


def load_single_file(
    model: Model, path: str, *, models_dir: Path, dtype: Any, extra: dict[str, Any]
) -> Any:
    """The family pipeline from one checkpoint file; ``extra`` are the loader's own
    options (a VAE override, the sd15 safety checker's)."""
    import diffusers

    ckpt = check_checkpoint(path, model.family.name)
    config = config_source(model, models_dir)
    local = Path(config).exists()
    kwargs: dict[str, Any] = {"config": config, "local_files_only": local, "torch_dtype": dtype}
    kwargs.update(extra)
    kwargs.update(_missing_parts(model, ckpt, config, dtype, local, given=set(extra)))
    if KINDS[model.family.name] == "flux" and "transformer" in ckpt.parts():
        kwargs["transformer"] = _flux_transformer(ckpt, config, dtype, local)
    cls = getattr(diffusers, model.family.pipeline_class)
    log.info(
        "%s: single-file checkpoint %s (%s; configs from %s)",
        model.name,
        ckpt.path,
        ", ".join(ckpt.parts()),
        config,
    )
    pipe = cls.from_single_file(str(ckpt.path), **kwargs)
    for module in pipe.components.values():  # some parts come back in training mode
        if hasattr(module, "eval"):  # (T5: dropout on), unlike from_pretrained's
            module.eval()
    return pipe


def _component_class(config: str, part: str, local: bool) -> Any:
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(config, local_files_only=local)
    library, name = index[part]
    return getattr(importlib.import_module(library), name)


def _missing_parts(
    model: Model, ckpt: Checkpoint, config: str, dtype: Any, local: bool, *, given: set[str]
) -> dict[str, Any]:
    """The parts of the family the file lacks, from ``config``'s weights."""
    kind = KINDS[model.family.name]
    out: dict[str, Any] = {}
    for part in PARTS[kind]:
        if part in ckpt.parts() or part in given:
            continue
        cls = _component_class(config, part, local)
        log.info("%s: %s is not in %s; from %s", model.name, part, ckpt.path.name, config)
        out[part] = cls.from_pretrained(
            config, subfolder=part, torch_dtype=dtype, local_files_only=local
        )
    return out


def _flux_transformer(ckpt: Checkpoint, config: str, dtype: Any, local: bool) -> Any:
    """The file's Flux transformer, renamed by Kiln's table and loaded strictly."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel
    from safetensors import safe_open

    from pipelines.original_layout import flux_from_original

    cfg = FluxTransformer2DModel.load_config(
        config, subfolder="transformer", local_files_only=local
    )
    with safe_open(str(ckpt.path), framework="pt") as f:
        state = {
            k: f.get_tensor(k)
            for k in f.keys()  # noqa: SIM118 (safe_open is not a mapping)
            if not k.startswith(("vae.", "text_encoders."))
        }
    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(cfg)
    # Fresh tensors, not views of the file's buffer: an unaligned one runs other kernels.
    weights = {k: v.clone() for k, v in flux_from_original(state, cfg).items()}
    model.load_state_dict(weights, strict=True, assign=True)
    return model.to(dtype=dtype).eval()
