"""GPU figures at real sizes: full SDXL and FLUX.1-schnell architectures, bare vs Kiln.

    python -m bench.gpu [--models sdxl,flux-schnell] [--batches 1,4,8] [--compile]
                        [--through-kiln] [--usd-per-gpu-hour 3.5]

Random weights built from the published configs (pipelines/fullsize.py; no hub). SDXL:
1024², 30 steps, fp16, guidance 5 (CFG: two UNet evaluations per step). Schnell:
1024², 4 steps, bf16, no guidance. For each batch size, seconds/image and images/s of
the bare pipeline call, optionally compiled, and with ``--through-kiln`` the same
burst through a real Kiln worker (embedded Valkey and S3 on this machine). MFU is
measured FLOPs per image (torch's FlopCounterMode: a 2-step minus a 1-step call is one
denoiser call, times the calls per image; the VAE and text encoders are left out, so
MFU is a lower bound) over
989 TFLOP/s dense bf16/fp16 (H100/H200 SXM). Skips cleanly without a CUDA GPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import table

PEAK_FLOPS = 989e12
SETUPS = {  # name: (dtype, steps, guidance, denoiser calls per step)
    "sdxl": ("fp16", 30, 5.0, 2),
    "flux-schnell": ("bf16", 4, 0.0, 1),
}


def denoiser_flops(pipe: Any, name: str) -> float:
    """FLOPs of one denoiser call for one 1024² image: a 2-step minus a 1-step call."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    def count(steps: int) -> float:
        kw: dict[str, Any] = dict(
            prompt=["x"], num_inference_steps=steps, width=1024, height=1024, output_type="latent"
        )
        if name.startswith("flux"):
            kw.update(max_sequence_length=256, guidance_scale=0.0)
        else:
            kw["guidance_scale"] = 1.0  # one UNet call per step; CFG doubles it
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            pipe(**kw)
        return float(counter.get_total_flops())

    return count(2) - count(1)


def bare_seconds_per_image(pipe: Any, name: str, batch: int, *, repeats: int = 2) -> tuple:
    import torch

    _dtype, steps, guidance, _calls = SETUPS[name]
    kw: dict[str, Any] = dict(
        num_inference_steps=steps,
        width=1024,
        height=1024,
        guidance_scale=guidance,
        output_type="pil",
    )
    if name.startswith("flux"):
        kw["max_sequence_length"] = 256
    prompts = [f"a red fox {i}" for i in range(batch)]
    gens = lambda: [torch.Generator("cuda").manual_seed(i) for i in range(batch)]  # noqa: E731
    with torch.inference_mode():
        pipe(prompt=prompts, generator=gens(), **kw)  # warm-up (and compile)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            pipe(prompt=prompts, generator=gens(), **kw)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
    return best / batch, torch.cuda.max_memory_allocated() / 2**30


def through_kiln(name: str, pipe: Any, batches: list[int], workdir: Path) -> dict[int, float]:
    """Seconds/image through API → Celery → worker → S3, for each max_batch."""
    import yaml

    from bench.common import burst, stack_with_worker

    folder = workdir / name
    if not (folder / "model_index.json").exists():
        pipe.save_pretrained(folder)
    dtype, steps, _guidance, _ = SETUPS[name]
    out = {}
    for b in batches:
        mf = workdir / f"models-{name}-{b}.yaml"
        mf.write_text(
            yaml.safe_dump(
                {
                    "models": [
                        {
                            "name": name,
                            "family": name,
                            "source": str(folder),
                            "dtype": dtype,
                            "max_batch": b,
                            "max_wait_ms": 200,
                            "soft_time_limit_s": 1800,
                            "time_limit_s": 1900,
                        }
                    ]
                }
            )
        )
        jobs = [
            dict(prompt=f"a red fox {i}", model=name, width=1024, height=1024, steps=steps, seed=i)
            for i in range(2 * b)
        ]
        with stack_with_worker(name, models_dir=workdir, workdir=workdir, models_file=mf) as (
            stack,
            api,
        ):
            burst(stack, api, jobs[:b])
            res = burst(stack, api, jobs)
        out[b] = res["wall_s"] / res["images"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="GPU figures at 1024²")
    ap.add_argument("--models", default="sdxl,flux-schnell")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile")
    ap.add_argument("--through-kiln", action="store_true")
    ap.add_argument("--usd-per-gpu-hour", type=float, default=3.5)
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("bench.gpu: no CUDA GPU here; skipping (run it on a machine with one).")
        return 0
    from pipelines.devices import pick_dtype
    from pipelines.fullsize import BUILDERS

    batches = [int(b) for b in args.batches.split(",")]
    gpu = torch.cuda.get_device_name(0)
    rows = []
    for name in args.models.split(","):
        dtype, steps, _g, calls = SETUPS[name]
        pipe = BUILDERS[name](pick_dtype(dtype, "cuda"), "cuda")
        pipe.set_progress_bar_config(disable=True)
        flops_image = denoiser_flops(pipe, name) * steps * calls
        kiln = (
            through_kiln(name, pipe, batches, Path(tempfile.mkdtemp())) if args.through_kiln else {}
        )
        for compiled in [False, True] if args.compile else [False]:
            if compiled:
                denoiser = "transformer" if name.startswith("flux") else "unet"
                setattr(
                    pipe,
                    denoiser,
                    torch.compile(getattr(pipe, denoiser), mode="max-autotune-no-cudagraphs"),
                )
            for b in batches:
                spi, mem = bare_seconds_per_image(pipe, name, b)
                k = kiln.get(b) if not compiled else None
                rows.append(
                    [
                        name,
                        dtype,
                        steps,
                        "on" if compiled else "off",
                        b,
                        spi,
                        1 / spi,
                        flops_image / spi / PEAK_FLOPS,
                        mem,
                        args.usd_per_gpu_hour * spi / 3600 * 1000,
                        k if k else "-",
                        spi / k if k else "-",
                    ]
                )
        print(f"{name}: {flops_image / 1e12:.1f} TFLOP per image (denoiser only)", flush=True)
        del pipe
        torch.cuda.empty_cache()
    print(f"\n{gpu}, 1024x1024, ${args.usd_per_gpu_hour}/GPU-hour\n")
    print(
        table(
            rows,
            [
                "model",
                "dtype",
                "steps",
                "compile",
                "batch",
                "s/image",
                "images/s",
                "MFU",
                "peak GiB",
                "$/1k images",
                "kiln s/image",
                "kiln/bare",
            ],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
