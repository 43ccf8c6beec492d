"""``torch.compile`` of a loaded model: what is compiled, which shapes warm-up compiles,
and the one policy for every other shape.

- **Regional** (``compile_regional: true``, the default): diffusers' regional
  compilation (``compile_repeated_blocks``) compiles the denoiser's repeated blocks, one
  graph that every block of that class reuses, and leaves the rest, the VAE included,
  eager: a fraction of the compile time (tiny-sd on a CPU, cold cache: 15 s for its
  first size and 4 s for the next, against 50 s and 38 s for the whole UNet and VAE
  decoder) for most of the speed-up. ``false`` compiles the whole denoiser and
  ``vae.decode``.
- **Static shapes, made at warm-up**: the default size and each of ``compile_sizes``, at
  every batch bucket, with the default guidance's classifier-free branch, LoRAs off and
  all on (:func:`warm_calls`).
- **Everything else runs eager**: after warm-up each call runs under torch's
  ``eager_on_recompile`` stance, so a shape with a graph uses it and any other runs
  eager; nothing compiles on the engine thread in the middle of a request. A call whose
  size, guidance branch or LoRA set warm-up did not cover is counted
  (``LoadedModel.compiled.eager_calls``, ``kiln_compile_eager_calls_total``) and logged once per
  shape; graphs made after warm-up (there should be none) are ``kiln_recompiles_total``.
- **LoRAs**: every listed adapter is loaded once, before compiling, and requests only
  switch them (``set_adapters``), so diffusers' LoRA hot-swap (loading a new adapter
  into a compiled model) has nothing to do here.
- **Caches**: inductor keeps its FX graph and autotuning caches under
  ``TORCHINDUCTOR_CACHE_DIR``; ``kiln worker`` sets it to ``<KILN_DATA_DIR>/inductor``
  unless set, so a restart on the same volume compiles from the cache.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pipelines.devices import is_cuda
from pipelines.registry import Model

log = logging.getLogger("kiln.pipelines")

LoraSet = tuple[tuple[str, float], ...]
# (width, height, classifier-free guidance on, the active LoRAs): what one compiled
# graph set serves (batch sizes are padded up to the buckets warm-up compiled).
Key = tuple[int, int, bool, LoraSet]


@dataclass
class Compiled:
    """What a loaded model's compile covers, and the calls it served eager."""

    what: str = ""  # "": not compiled
    keys: set[Key] = field(default_factory=set)  # the shapes warm-up made
    eager_keys: set[Key] = field(default_factory=set)  # others seen (each logged once)
    eager_calls: int = 0


def options(model: Model, device: str) -> dict[str, Any]:
    """``torch.compile`` keywords for the entry: its mode on CUDA (the CPU compiles with
    the default mode), its backend, and static shapes (one graph per shape, made at
    warm-up)."""
    spec = model.spec
    mode = spec.compile_mode if is_cuda(device) else "default"
    out: dict[str, Any] = {"fullgraph": False, "backend": spec.compile_backend, "dynamic": False}
    if spec.compile_backend == "inductor":
        out["mode"] = mode
    return out


def compile_model(model: Model, pipe: Any, denoiser: Any, device: str) -> str:
    """Lazy ``torch.compile`` (warm-up compiles); returns what was compiled."""
    import torch

    opts = options(model, device)
    if model.spec.compile_regional and getattr(denoiser, "_repeated_blocks", None):
        denoiser.compile_repeated_blocks(**opts)
        return f"{type(denoiser).__name__} blocks {', '.join(denoiser._repeated_blocks)}"
    denoiser.compile(**opts)
    vae = pipe.vae
    vae.decode = torch.compile(vae.decode, **opts)
    return f"{type(denoiser).__name__} and vae.decode"


def cfg(model: Model, guidance_scale: float) -> bool:
    """Whether a call runs the classifier-free branch (twice the denoiser's batch)."""
    return bool(model.family.negative_prompt) and guidance_scale > 1.0


def lora_key(loras: LoraSet) -> LoraSet:
    """A LoRA set in one order, whatever order a request named it in."""
    return tuple(sorted((str(n), float(w)) for n, w in loras))


def key(model: Model, *, width: int, height: int, guidance_scale: float, loras: LoraSet) -> Key:
    return (width, height, cfg(model, guidance_scale), lora_key(loras))


def sizes(model: Model, default: tuple[int, int]) -> list[tuple[int, int]]:
    """The sizes warm-up compiles: the default, then ``compile_sizes``."""
    return list(dict.fromkeys([default, *model.spec.compile_sizes]))


def warm_calls(model: Model, default: tuple[int, int]) -> list[tuple[int, int, int, LoraSet]]:
    """``(width, height, images, loras)`` of each warm-up call of a compiled model: every
    size at every batch bucket (without buckets, 1 then 2 images: the graphs turn
    dynamic in the batch), then each size once with every listed LoRA on."""
    buckets = [b for b in model.spec.buckets if b <= model.spec.max_batch]
    counts = buckets or ([1, 2] if model.spec.max_batch > 1 else [1])
    all_loras = tuple((lo.name, lo.default_weight) for lo in model.spec.loras)
    calls: list[tuple[int, int, int, LoraSet]] = []
    for w, h in sizes(model, default):
        calls += [(w, h, n, ()) for n in counts]
        calls += [(w, h, 1, all_loras)] if all_loras else []
    return calls


@contextlib.contextmanager
def serving(model: Model, compiled: Compiled | None, params: Any) -> Iterator[None]:
    """Around each pipeline call of ``params`` (``pipelines.batch.Params``): a compiled
    model never compiles here (shapes warm-up did not make run eager, counted and logged
    once each); nothing is done for a model that is not compiled."""
    if compiled is None or not compiled.keys:
        yield
        return
    import torch

    k = key(
        model,
        width=params.width,
        height=params.height,
        guidance_scale=params.guidance_scale,
        loras=params.loras,
    )
    if k not in compiled.keys:
        compiled.eager_calls += 1
        if k not in compiled.eager_keys:
            compiled.eager_keys.add(k)
            log.info(
                "%s: %dx%d (guidance branch %s, LoRAs %s) was not compiled at warm-up: it "
                "runs eager (compile_sizes lists the sizes to compile)",
                model.name,
                k[0],
                k[1],
                "on" if k[2] else "off",
                list(k[3]) or "off",
            )
    with torch.compiler.set_stance("eager_on_recompile"):
        yield


def compiled_graphs() -> int:
    """Graphs torch.compile has made in this process (0 before any compile)."""
    if "torch._dynamo" not in sys.modules:
        return 0
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
