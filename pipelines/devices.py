"""Device and dtype choice: fp16/bf16 on CUDA; fp32, or bf16 where asked, on the CPU.

Pure functions of their arguments (``pick_device("")`` alone asks torch whether a
GPU is visible), so they are tested without a GPU by passing device strings.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from config.settings import CPU_DTYPES, Settings

if TYPE_CHECKING:
    import torch

    from pipelines.resident import Budget

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


# -- is the GPU really there: torch's CUDA build and the driver ------------------------
# torch's CUDA builds and the oldest Linux driver each runs on, newest first (NVIDIA's
# CUDA compatibility table: CUDA 13 needs R580+; CUDA 12.8 R570+; 12.x builds start on
# R525+ by minor-version compatibility). deploy/README.md carries the same table.
BUILDS = (("cu130", "13", 580), ("cu128", "12", 570), ("cu126", "12", 525))


def build_for_driver(driver: str) -> str | None:
    """The newest torch CUDA build (``cu128``) that runs on ``driver`` (``570.86.15``)."""
    major = int(driver.split(".")[0])
    return next((name for name, _cuda, need in BUILDS if major >= need), None)


def driver_version() -> str | None:
    """The NVIDIA driver's version, from NVML (the library the driver ships), else
    from ``nvidia-smi``; None when neither answers (no driver, or none visible here)."""
    import ctypes

    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        if nvml.nvmlInit_v2() == 0:
            buf = ctypes.create_string_buffer(96)
            ok = nvml.nvmlSystemGetDriverVersion(buf, ctypes.c_uint(96)) == 0
            nvml.nvmlShutdown()
            if ok and buf.value:
                return buf.value.decode()
    except (OSError, AttributeError):
        pass
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0] if out else None


def torch_build() -> tuple[str, str | None]:
    """(torch's version, the CUDA version it was built for, or None for a CPU build)."""
    import torch

    return str(torch.__version__), torch.version.cuda


def no_cuda_reason(*, torch_version: str, cuda_build: str | None, driver: str | None) -> str:
    """Why torch sees no CUDA device, and what to do, from the three facts that decide
    it (pure: tested without a GPU)."""
    if cuda_build is None:
        return (
            f"torch {torch_version} is a CPU-only build (no CUDA); install a CUDA build of "
            "torch==" + torch_version.split("+")[0] + " that matches this host's driver "
            "(deploy/README.md, 'The wheel and the driver'; the worker image's TORCH_CUDA "
            "build argument)"
        )
    need = min((d for _n, cuda, d in BUILDS if cuda == cuda_build.split(".")[0]), default=0)
    where = f"torch {torch_version} is built for CUDA {cuda_build}"
    if driver is None:
        return (
            f"{where}, and no NVIDIA driver answered (NVML, nvidia-smi): is a GPU visible "
            "here (CUDA_VISIBLE_DEVICES, the container's --gpus or device plugin)?"
        )
    if int(driver.split(".")[0]) < need:
        build = build_for_driver(driver)
        fix = f"upgrade the driver to R{need}+"
        if build:
            image = f"worker image: --build-arg TORCH_CUDA={build}"
            fix = f"install torch's {build} build ({image}) or {fix}"
        return f"{where}, which needs driver R{need}+; this host's driver is {driver}: {fix}"
    return (
        f"{where} and the driver is {driver}, yet torch finds no usable device: check "
        "CUDA_VISIBLE_DEVICES and that the device is not held exclusively by another process"
    )


def require_cuda(device: str, *, asked_by: str) -> None:
    """Raise :class:`~config.errors.DeviceUnavailable` in one line when ``device`` (cuda,
    cuda:N) cannot be had; ``asked_by`` says what asked for it (``--gpu 0``)."""
    from config.errors import DeviceUnavailable

    if cuda_available():
        import torch

        index = int(device.partition(":")[2] or 0)
        if index < torch.cuda.device_count():
            return
        raise DeviceUnavailable(
            f"{asked_by} asks for {device}, but torch sees {torch.cuda.device_count()} CUDA "
            "device(s) here (CUDA_VISIBLE_DEVICES renumbers them from 0)"
        )
    version, build = torch_build()
    reason = no_cuda_reason(torch_version=version, cuda_build=build, driver=driver_version())
    raise DeviceUnavailable(
        f"{asked_by} asks for a CUDA GPU, but torch sees none: {reason}; "
        "or set KILN_DEVICE=cpu to serve on the CPU on purpose"
    )


def serving_device(
    *, device: str, gpu: int | None, profile: str, dtype: str
) -> tuple[str, str | None]:
    """(the device a worker serves on, what asked for CUDA or None).

    ``KILN_DEVICE=cpu`` is the one way to a CPU worker on purpose; ``KILN_DEVICE=cuda…``,
    ``--gpu I`` (pinned, so ``cuda``) or the prod profile with a half-precision model ask
    for CUDA, which :func:`require_cuda` then holds them to; otherwise (the dev and test
    profiles, no ``--gpu``) ``""``: CUDA when present, else the CPU.
    """
    device = device.strip()
    if device == "cpu":
        return "cpu", None
    if is_cuda(device):
        return device, f"KILN_DEVICE={device}"
    if gpu is not None:
        return "cuda", f"--gpu {gpu}"
    if profile == "prod" and dtype in ("fp16", "bf16"):
        return "cuda", f"the prod profile with a {dtype} model"
    return device, None


def model_budget(settings: Settings, *, max_resident: int | None = None) -> Budget:
    """The device memory a worker's resident models may take: ``KILN_MODEL_BUDGET_MB``;
    else, on a GPU, its free memory now less a headroom for activations
    (``KILN_MODEL_HEADROOM_MB``, default a fifth of the card, at least 2 GiB); else (the
    CPU) no byte limit. ``max_resident`` caps the count; ``KILN_HOST_CACHE_MB`` keeps
    evicted models in host RAM."""
    from pipelines.resident import Budget

    mib = 1 << 20
    device_bytes: int | None = settings.model_budget_mb * mib or None
    if device_bytes is None and is_cuda(settings.device):
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(settings.device))
        headroom = settings.model_headroom_mb * mib or max(2 << 30, total // 5)
        device_bytes = max(0, free - headroom)
    return Budget(
        device_bytes=device_bytes,
        max_resident=max_resident,
        host_bytes=settings.host_cache_mb * mib,
    )
