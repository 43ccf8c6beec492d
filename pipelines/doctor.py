"""``kiln doctor``: what this machine has, and whether it can serve each model.

The host: torch and the CUDA version it was built for, the driver, each visible device
(name, compute capability, free and total memory) and the SDPA backends torch would
use. Each model: where its weights come from and whether they are here, their bytes in
the dtype it would run in (counted from the safetensors headers, without loading a
tensor), and whether it fits its device with ``max_batch`` images at its default size.

The fit is an estimate, stated as one: the weights plus ``max_batch`` times a
per-megapixel working memory of its family (:data:`WORKING_GIB_PER_MP`, about what
the GPU proof's peak-memory column shows at batch 1), against the device's free memory
(the host's available memory on the CPU). Nothing here downloads, builds or loads a
model.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.devices import driver_version, is_cuda, pick_dtype, serving_device
from pipelines.registry import Model

GiB = 2**30
# Working memory of one image per megapixel beyond the weights (activations, the VAE
# decode, its fp32 upcast for SDXL), in GiB: rounded up from published peak figures.
WORKING_GIB_PER_MP = {"sd15": 1.5, "sdxl": 2.5, "flux": 3.0}
# Parameters of each family's published architecture (denoiser, text encoders, VAE), for
# weights that are not on this host yet: SD 1.5 0.86 B + 0.12 B + 0.08 B; SDXL 2.57 B +
# 0.12 B + 0.69 B + 0.08 B; Flux 11.9 B + T5-XXL encoder 4.76 B + 0.12 B + 0.08 B.
PUBLISHED_PARAMS = {"sd15": 1.07e9, "sdxl": 3.47e9, "flux": 16.9e9}
BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
SAFETENSORS_DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "U8": 1}


@dataclass
class Device:
    name: str
    capability: str
    free_bytes: int
    total_bytes: int


@dataclass
class Host:
    torch: str
    cuda_build: str | None
    driver: str | None
    devices: list[Device] = field(default_factory=list)
    sdpa: dict[str, bool] = field(default_factory=dict)
    ram_available_bytes: int = 0


@dataclass
class Verdict:
    model: str
    family: str
    device: str  # where a worker here would serve it: cuda, cpu
    dtype: str  # what it would run in there
    weights: str  # where the weights come from
    weights_bytes: int | None  # in that dtype; None: not known here
    need_bytes: int | None
    room_bytes: int | None
    problem: str = ""  # empty: servable here

    @property
    def ok(self) -> bool:
        return not self.problem


def host() -> Host:
    import torch

    facts = Host(str(torch.__version__), torch.version.cuda, driver_version())
    facts.ram_available_bytes = _mem_available()
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            major, minor = torch.cuda.get_device_capability(i)
            facts.devices.append(
                Device(torch.cuda.get_device_name(i), f"{major}.{minor}", free, total)
            )
        b = torch.backends.cuda
        facts.sdpa = {
            "flash": b.flash_sdp_enabled(),
            "mem_efficient": b.mem_efficient_sdp_enabled(),
            "cudnn": b.cudnn_sdp_enabled(),
            "math": b.math_sdp_enabled(),
        }
    return facts


def _mem_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def numel_in(path: Path) -> int:
    """Elements of every floating tensor in one ``.safetensors`` file (its header only)."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    total = 0
    for name, info in header.items():
        if name == "__metadata__" or not info["dtype"].startswith(("F", "BF")):
            continue
        n = 1
        for dim in info["shape"]:
            n *= dim
        total += n
    return total


def weight_files(folder: Path, variant: str | None) -> list[Path]:
    """A diffusers folder's weight files: per component, the variant's when it has them."""
    out: list[Path] = []
    for part in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(part.glob("*.safetensors"))  # model.safetensors, model.fp16.safetensors
        chosen = [f for f in files if variant and f".{variant}" in f.stem]
        out += chosen or [f for f in files if "." not in f.stem]
    return out


def locate(model: Model, models_dir: Path) -> tuple[str, Path | None, str]:
    """(where the weights come from, a local folder or file holding them, a problem)."""
    spec = model.spec
    if spec.random_init:
        return f"random weights ({spec.random_init}), built on the device", None, ""
    if spec.tiny:
        folder = models_dir / spec.tiny
        if (folder / "model_index.json").exists():
            return f"tiny stand-in {folder}", folder, ""
        return f"tiny stand-in, built on first start in {folder}", None, ""
    source = spec.source.replace("{models_dir}", str(models_dir))
    path = Path(source).expanduser()
    if path.exists():
        return str(path), path, ""
    if source.startswith(("/", "./", "../", "~")):
        return source, None, f"its source {source} is not on this host"
    try:
        from huggingface_hub import snapshot_download

        cached = snapshot_download(source, revision=spec.revision, local_files_only=True)
        return f"hub id {source}, cached at {cached}", Path(cached), ""
    except Exception:  # not in the local cache: the first load downloads it
        return f"hub id {source}, not cached: the first load downloads it", None, ""


def check(model: Model, facts: Host, *, device: str, profile: str, models_dir: Path) -> Verdict:
    """Whether a worker on this host could serve ``model`` (``device``: KILN_DEVICE)."""
    want, asked_by = serving_device(
        device=device, gpu=None, profile=profile, dtype=model.spec.dtype
    )
    cuda = bool(facts.devices)
    on = want or ("cuda" if cuda else "cpu")
    dtype = str(pick_dtype(model.spec.dtype, on)).removeprefix("torch.")
    weights, folder, problem = locate(model, models_dir)
    verdict = Verdict(model.name, model.family.name, on, dtype, weights, None, None, None)
    if asked_by is not None and not cuda:
        problem = problem or f"{asked_by} asks for CUDA, and torch sees no CUDA device here"
    family = "flux" if model.family.name.startswith("flux") else model.family.name
    numel = _numel(model, folder)
    if numel is None and not model.spec.tiny and family in PUBLISHED_PARAMS:
        numel = int(PUBLISHED_PARAMS[family])
        verdict.weights += f" (size of the published {family} architecture)"
    if numel is not None:
        verdict.weights_bytes = numel * BYTES.get(dtype, 4)
        mp = model.width * model.height / 1e6
        working = WORKING_GIB_PER_MP.get(family, 2.0) * mp * model.spec.max_batch * GiB
        if model.spec.tiny:  # a stand-in's activations are as tiny as its weights
            working = verdict.weights_bytes * model.spec.max_batch
        verdict.need_bytes = verdict.weights_bytes + int(working)
    if is_cuda(on) and cuda:
        index = int(on.partition(":")[2] or 0)
        verdict.room_bytes = facts.devices[min(index, len(facts.devices) - 1)].free_bytes
    elif not is_cuda(on):
        verdict.room_bytes = facts.ram_available_bytes or None
    need, room = verdict.need_bytes, verdict.room_bytes
    if not problem and need is not None and room is not None and need > room:
        problem = (
            f"needs about {need / GiB:.1f} GiB with max_batch {model.spec.max_batch} at "
            f"{model.width}x{model.height}; {room / GiB:.1f} GiB free on {on}"
        )
    verdict.problem = problem
    return verdict


def _numel(model: Model, folder: Path | None) -> int | None:
    if model.spec.random_init:
        import torch

        from pipelines import fullsize

        try:
            pipe = fullsize.build(model.spec.random_init, torch.float32, "meta")
        except Exception:
            return None
        return sum(
            p.numel()
            for m in pipe.components.values()
            if hasattr(m, "parameters")
            for p in m.parameters()
        )
    if folder is None:
        return None
    files = [folder] if folder.is_file() else weight_files(folder, model.spec.variant)
    return sum(numel_in(f) for f in files) if files else None


def human(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / 2**20:.1f} MiB"


def report(facts: Host, verdicts: list[Verdict]) -> list[str]:
    """The lines ``kiln doctor`` prints."""
    cuda = f"CUDA {facts.cuda_build}" if facts.cuda_build else "a CPU-only build (no CUDA)"
    lines = [
        f"torch {facts.torch}: {cuda}",
        f"driver: {facts.driver or 'none found (NVML, nvidia-smi)'}",
    ]
    if facts.devices:
        for i, d in enumerate(facts.devices):
            lines.append(
                f"cuda:{i}: {d.name}, compute capability {d.capability}, "
                f"{d.free_bytes / GiB:.1f} of {d.total_bytes / GiB:.1f} GiB free"
            )
        on = [name for name, enabled in facts.sdpa.items() if enabled]
        lines.append(f"SDPA backends enabled: {', '.join(on) or 'none'}")
    else:
        lines.append("CUDA devices: none that torch can use")
    lines.append(f"host memory available: {facts.ram_available_bytes / GiB:.1f} GiB")
    lines.append("")
    for v in verdicts:
        size = human(v.weights_bytes) if v.weights_bytes is not None else "unknown"
        fits = "no" if not v.ok else "yes" if v.need_bytes is not None else "unknown"
        need = f", needs ~{human(v.need_bytes)}" if v.need_bytes is not None else ""
        lines.append(f"{v.model} ({v.family}) on {v.device} as {v.dtype}")
        lines.append(f"  weights: {v.weights}; {size} in {v.dtype}{need}; fits: {fits}")
        if v.problem:
            lines.append(f"  cannot serve: {v.problem}")
    return lines
