"""Device and dtype choice: fp16/bf16 on CUDA; fp32, or bf16 where asked, on the CPU.

Pure functions of their arguments (``pick_device("")`` alone asks torch whether a
GPU is visible), so they are tested without a GPU by passing device strings.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from config.settings import CPU_DTYPES

if TYPE_CHECKING:
    import torch

log = logging.getLogger("kiln.pipelines")

_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
_warned: set[tuple[str, str, str]] = set()


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


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX tiles)."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def dtype_name(dtype: torch.dtype) -> str:
    """fp16 | bf16 | fp32 for a torch dtype (its own name for any other)."""
    name = str(dtype).removeprefix("torch.")
    return next((short for short, long in _DTYPES.items() if long == name), name)


def pick_dtype(dtype: str, device: str, *, cpu_dtype: str = "fp32") -> torch.dtype:
    """The torch dtype for a model entry's ``dtype`` (fp16 | bf16 | fp32) on ``device``.

    On CUDA the entry's dtype is used as is. On the CPU, ``cpu_dtype`` decides for
    half-precision entries (an fp32 entry stays fp32):

    - ``fp32`` (default): results stay bit-equal across batch sizes;
    - ``bf16``: always (slow on CPUs that emulate it);
    - ``auto``: bf16 when the CPU has it in hardware (:func:`native_bf16`), else fp32.

    A dtype other than the entry's is said once per (dtype, device, choice) in the log.
    """
    import torch

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    if cpu_dtype not in CPU_DTYPES:
        raise ValueError(f"cpu_dtype must be one of {', '.join(CPU_DTYPES)}, got {cpu_dtype!r}")
    if dtype == "fp32" or is_cuda(device):
        result: torch.dtype = getattr(torch, _DTYPES[dtype])
        return result
    use = "bf16" if cpu_dtype == "bf16" or (cpu_dtype == "auto" and native_bf16()) else "fp32"
    if use != dtype and (dtype, device, cpu_dtype) not in _warned:
        _warned.add((dtype, device, cpu_dtype))
        log.info(
            "dtype %s requested on %s: using %s instead (cpu_dtype %s)",
            dtype,
            device,
            use,
            cpu_dtype,
        )
    result = getattr(torch, _DTYPES[use])
    return result
