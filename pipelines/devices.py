"""Device and dtype choice: fp16/bf16 on CUDA, fp32 on the CPU (said once in the log)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("kiln.pipelines")

_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
_warned: set[tuple[str, str]] = set()


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def pick_device(requested: str = "") -> str:
    """``""`` → ``cuda`` when a GPU is visible, else ``cpu``; anything else is kept."""
    if requested:
        return requested
    return "cuda" if cuda_available() else "cpu"


def pick_dtype(dtype: str, device: str) -> Any:
    """The torch dtype for a model entry's ``dtype`` on ``device``.

    Half precision is a GPU feature here: on the CPU, fp16/bf16 fall back to fp32
    (much faster on CPUs without native half kernels) with one log line per model dtype.
    """
    import torch

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if dtype != "fp32" and not device.startswith("cuda"):
        if (dtype, device) not in _warned:
            _warned.add((dtype, device))
            log.info("dtype %s requested on %s: using fp32 on the CPU", dtype, device)
        return torch.float32
    return getattr(torch, _DTYPES[dtype])
