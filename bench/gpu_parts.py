"""The GPU proof's shared parts: the setups and the models.yaml entries they load, the
record (each figure saved as it lands, the table, the anchor lines), the device's
clock and memory, and one timed pipeline call."""

from __future__ import annotations

import contextlib
import gc
import json
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import table

PEAK_FLOPS = 989e12  # H100/H200 SXM, dense fp16/bf16
# Like for like: published seconds for ONE image at 1024² on an H100 (latency), compared
# with batch-1 rows only; and this project's throughput goals (seconds per image at the
# best batch), compared with the best row of any batch.
LATENCY_ANCHORS = {
    "sdxl": {"H100 diffusers, 30 steps": 2.50},
    "flux-schnell": {"H100 bf16, 4 steps": 1.5},
}
THROUGHPUT_GOALS = {"sdxl": 0.9, "flux-schnell": 0.6}


@dataclass(frozen=True)
class Setup:
    model: str  # also the family
    arch: str  # pipelines.fullsize architecture
    dtype: str
    steps: int
    size: int
    guidance: float
    weights: Path | None = None  # saved weights (bench.gpu_disk); None: random_init


def setups(smoke: bool) -> dict[str, Setup]:
    tail, size = ("-smoke", 64) if smoke else ("", 1024)
    return {
        "sdxl": Setup("sdxl", "sdxl" + tail, "fp16", 2 if smoke else 30, size, 5.0),
        "flux-schnell": Setup(
            "flux-schnell", "flux-schnell" + tail, "bf16", 2 if smoke else 4, size, 0.0
        ),
    }


def entry(setup: Setup, name: str, *, max_batch: int, **options: Any) -> dict[str, Any]:
    """The models.yaml entry both the bare pipeline and the worker are loaded from: the
    saved weights as a worker loads them, or (none saved) random weights built on the
    device."""
    source = weights_source(setup, setup.weights) if setup.weights else {"random_init": setup.arch}
    return {
        "name": name,
        "family": setup.model,
        **source,
        "dtype": setup.dtype,
        "max_batch": max_batch,
        "max_wait_ms": 2000,  # a burst fills each batch
        "defaults": {"width": setup.size, "height": setup.size, "steps": setup.steps},
        "limits": {"min_size": min(64, setup.size), "max_size": max(2048, setup.size)},
        "soft_time_limit_s": 1800,
        "time_limit_s": 1900,
        **options,
    }


def variant_of(setup: Setup) -> str | None:
    """SDXL's weights are saved, and read, as the hub's ``fp16`` variant files."""
    return "fp16" if setup.model == "sdxl" else None


def weights_source(setup: Setup, folder: Path) -> dict[str, Any]:
    """The entry fields that point a model at its saved weights."""
    out: dict[str, Any] = {"source": str(folder)}
    if variant_of(setup):
        out["variant"] = variant_of(setup)
    if setup.model == "sdxl":
        out["vae"] = str(folder)  # a VAE override (a pipeline folder: its vae/), as in prod
    return out


def model_of(raw: dict[str, Any]) -> Any:
    from config.models import parse_model
    from pipelines.registry import resolve

    return resolve(parse_model(raw))


# -- the clock, the budget and the record -----------------------------------------------
@dataclass
class Proof:
    mode: str
    device: str  # torch's name: cuda or cpu
    device_name: str
    out: Path
    budget_s: float | None
    usd_per_gpu_hour: float
    t0: float = field(default_factory=time.perf_counter)
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {text}", flush=True)

    def fits(self, what: str, estimate_s: float) -> bool:
        """Whether a stage of about ``estimate_s`` still fits the budget (else noted)."""
        if self.budget_s is None or self.elapsed() + estimate_s <= self.budget_s:
            return True
        left = self.budget_s - self.elapsed()
        self.skipped.append({"stage": what, "estimate_s": round(estimate_s), "left_s": left})
        self.say(f"skip {what}: needs ~{estimate_s:.0f}s, {max(0.0, left):.0f}s of budget left")
        self.save()
        return False

    @contextlib.contextmanager
    def stage(self, what: str) -> Iterator[None]:
        """Run one stage; a failure is reported and saved, and the run goes on."""
        try:
            yield
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            self.failed.append({"stage": what, "error": text})
            self.say(f"FAILED {what}: {text}")
            traceback.print_exc(limit=4, file=sys.stdout)
            self.save()

    def add(self, **row: Any) -> None:
        spi = row.get("s_per_image")
        if spi:
            row.setdefault("images_per_s", 1 / spi)
            row.setdefault("usd_per_1k_images", self.usd_per_gpu_hour * spi / 3.6)
        self.rows.append(row)
        shown = ", ".join(f"{k} {fmt_value(v)}" for k, v in row.items() if v is not None)
        self.say(f"  => {shown}")
        self.save()

    def save(self) -> None:
        data = {
            "mode": self.mode,
            "device": self.device_name,
            "elapsed_s": round(self.elapsed(), 1),
            "usd_per_gpu_hour": self.usd_per_gpu_hour,
            "peak_flops": PEAK_FLOPS,
            "rows": self.rows,
            "skipped": self.skipped,
            "failed": self.failed,
            "notes": self.notes,
        }
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str))
        tmp.replace(self.out)
        self.out.with_suffix(".md").write_text(self.markdown())

    def markdown(self) -> str:
        head = f"GPU proof, {self.mode} mode, {self.device_name}, {self.elapsed():.0f} s\n\n```\n"
        return head + self.table() + "\n```\n" + "".join(f"\n{x}" for x in self.anchor_lines())

    def table(self) -> str:
        cols = [
            ("model", "model"),
            ("stage", "stage"),
            ("variant", "variant"),
            ("batch", "batch"),
            ("s_per_image", "s/image"),
            ("images_per_s", "images/s"),
            ("ratio", "ratio"),
            ("compile_s", "compile s"),
            ("disk_s", "disk s"),
            ("mfu", "MFU"),
            ("peak_gib", "peak GiB"),
            ("host_peak_gib", "host GiB"),
            ("usd_per_1k_images", "$/1k images"),
            ("check", "check"),
        ]
        rows = [
            [r.get(k, "-") if r.get(k) is not None else "-" for k, _ in cols] for r in self.rows
        ]
        return table(rows, [h for _, h in cols])

    def anchor_lines(self) -> list[str]:
        """Per model, like for like: the best batch-1 row against the published latency
        anchors, and the best row of any batch against the throughput goal."""
        lines = []
        for model, anchors in LATENCY_ANCHORS.items():
            rows = [r for r in self.rows if r["model"] == model and r.get("s_per_image")]
            rows = [r for r in rows if r["stage"] in ("bare", "kiln", "compile")]
            if not rows:
                continue
            parts: list[str] = []
            solo = [r for r in rows if r["batch"] == 1]
            if solo:
                best = min(solo, key=lambda r: r["s_per_image"])
                spi = best["s_per_image"]
                parts.append(f"latency {spi:.3f} s/image at batch 1 ({_how(best)})")
                parts += [
                    f"{name} {value} s: {_verdict(spi, value)}" for name, value in anchors.items()
                ]
            best = min(rows, key=lambda r: r["s_per_image"])
            spi, goal = best["s_per_image"], THROUGHPUT_GOALS[model]
            parts.append(
                f"throughput {1 / spi:.2f} images/s ({spi:.3f} s/image, {_how(best)}, batch "
                f"{best['batch']}); goal {goal} s/image: {_verdict(spi, goal)}"
            )
            kiln = [r["s_per_image"] for r in rows if r["stage"] == "kiln"]
            if kiln:
                parts.append(f"through Kiln best {min(kiln):.3f} s/image")
            if self.mode == "smoke":
                parts.append("(smoke figures: tiny models on a CPU, not comparable)")
            lines.append(f"{model}: " + "; ".join(parts))
        return lines


def _how(row: dict[str, Any]) -> str:
    return f"{row['stage']}, {row.get('variant') or 'base'}"


def _verdict(spi: float, target: float) -> str:
    return f"{target / spi:.2f}× → " + (
        "met" if spi <= target else f"not met ({spi / target:.2f}× over)"
    )


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 0.01 else f"{v:.3f}"
    return str(v)


# -- the device ----------------------------------------------------------------------------
def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def allocated_gib(device: str) -> float:
    import torch

    return torch.cuda.memory_allocated() / 2**30 if device.startswith("cuda") else 0.0


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


# -- bare -------------------------------------------------------------------------------
def params_for(setup: Setup, loaded: Any, *, steps: int | None = None) -> Any:
    from pipelines.batch import Params

    return Params(
        width=setup.size,
        height=setup.size,
        steps=steps or setup.steps,
        guidance_scale=setup.guidance,
        scheduler=loaded.model.scheduler,
    )


def items(n: int) -> list[Any]:
    from pipelines.batch import Item

    return [Item(f"a red fox in the snow, take {i}", None, i) for i in range(n)]


def load(raw: dict[str, Any], device: str, models_dir: Path) -> tuple[Any, float]:
    from pipelines.loader import load_model

    t0 = time.perf_counter()
    loaded = load_model(model_of(raw), device=device, models_dir=models_dir)
    sync(device)
    return loaded, time.perf_counter() - t0


def timed_call(setup: Setup, loaded: Any, batch: int) -> tuple[float, float, float | None]:
    """(first 2-step call s, s/image of a full call, peak GiB) at ``batch``."""
    from pipelines.batch import run_batch

    device = loaded.device
    t0 = time.perf_counter()
    run_batch(loaded, params_for(setup, loaded, steps=min(2, setup.steps)), items(batch))
    sync(device)
    first = time.perf_counter() - t0
    reset_peak(device)
    t0 = time.perf_counter()
    run_batch(loaded, params_for(setup, loaded), items(batch))
    sync(device)
    return first, (time.perf_counter() - t0) / batch, peak_gib(device)
