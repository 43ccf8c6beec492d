"""Device and dtype choice: fp16/bf16 on CUDA, fp32 on the CPU (said once in the log).

Pure functions of their arguments (``pick_device("")`` alone asks torch whether a
GPU is visible), so they are tested without a GPU by passing device strings.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger("kiln.pipelines")

_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
_warned: set[tuple[str, str]] = set()


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def pick_device(requested: str = "") -> str:
    """``""`` → ``"cuda"`` when a GPU is visible, else ``"cpu"``; anything else is kept
    (``"cuda:1"``, ``"cpu"``)."""
    requested = requested.strip()
    if requested:
        return requested
    return "cuda" if cuda_available() else "cpu"


def is_cuda(device: str) -> bool:
    return device == "cuda" or device.startswith("cuda:")


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    """The torch dtype for a model entry's ``dtype`` (fp16 | bf16 | fp32) on ``device``.

    Half precision is a GPU feature here: off CUDA, fp16/bf16 fall back to fp32 (CPUs
    without native half kernels run it many times slower), with one log line per
    (dtype, device) in the process.
    """
    import torch

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    if dtype != "fp32" and not is_cuda(device):
        if (dtype, device) not in _warned:
            _warned.add((dtype, device))
            log.info("dtype %s requested on %s: using fp32 instead", dtype, device)
        return torch.float32
    result: torch.dtype = getattr(torch, _DTYPES[dtype])
    return result
