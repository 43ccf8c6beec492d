"""Batching through the whole stack vs the bare pipeline, in one run.

    python -m bench.batching [--images 32] [--steps 8] [--size 64] [--rounds 3]
                             [--torch-threads N]

Runs the bare tiny-sd pipeline at batch 1 and 8 in this process, and bursts of 32
jobs through API → Celery → worker → S3 with max_batch 1 and 8 (two stacks, up side
by side). The four measurements are interleaved for ``--rounds`` rounds and the best
round of each is kept (these VMs are noisy: ±15 % run to run). Prints images/s for
all four and the ratios stack/bare and batched/unbatched.
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.common import (
    burst,
    cpu_dtypes,
    save,
    stack_with_worker,
    table,
    tiny_models,
    torch_threads,
)

MODEL = "tiny-sd"


class Bare:
    """The bare pipeline: load, warm-up and every call in this (one) thread."""

    def __init__(self, models_dir: Path, *, steps: int, size: int, cpu_dtype: str = "fp32") -> None:
        from config.settings import DEFAULT_MODELS_FILE
        from pipelines.batch import Params
        from pipelines.loader import load_model, warm_up
        from pipelines.registry import Registry

        model = Registry.from_file(DEFAULT_MODELS_FILE)[MODEL]
        self.loaded = load_model(model, models_dir=models_dir, cpu_dtype=cpu_dtype)
        warm_up(self.loaded)
        self.params = Params(
            width=size, height=size, steps=steps, guidance_scale=7.5, scheduler=model.scheduler
        )

    def images_per_s(self, *, batch: int, images: int) -> float:
        from pipelines.batch import Item, run_batch

        items = [Item(f"a red fox, take {i}", None, i) for i in range(images)]
        run_batch(self.loaded, self.params, items[:batch])  # same-shape warm-up
        t0 = time.perf_counter()
        for i in range(0, images, batch):
            run_batch(self.loaded, self.params, items[i : i + batch])
        return images / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description="Batching: stack vs bare pipeline")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sweep", default="1,2,4,8,16", help="bare pipeline batch sizes")
    ap.add_argument("--models-dir", type=Path, default=None)
    ap.add_argument(
        "--torch-threads", type=int, default=0, help="bare and workers alike (0: torch's)"
    )
    args = ap.parse_args()

    threads_env = torch_threads(args.torch_threads)
    models_dir = tiny_models(args.models_dir)
    jobs = [
        dict(
            prompt=f"a red fox, take {i}",
            model=MODEL,
            width=args.size,
            height=args.size,
            steps=args.steps,
            seed=i,
        )
        for i in range(args.images)
    ]

    best: dict[str, float] = {}
    calls: dict[int, int] = {}
    with ExitStack() as es:
        stacks: dict[int, tuple[Any, Any]] = {
            b: es.enter_context(
                stack_with_worker(
                    MODEL, models_dir=models_dir, env=threads_env, max_batch=b, max_wait_ms=100
                )
            )
            for b in (1, 8)
        }
        for stack, api in stacks.values():
            burst(stack, api, jobs)  # warm every API thread, connection and the worker path
        bare = Bare(models_dir, steps=args.steps, size=args.size)
        for r in range(args.rounds):
            row = {}
            for b in (1, 8):
                row[f"bare{b}"] = bare.images_per_s(batch=b, images=args.images)
                stack, api = stacks[b]
                res = burst(stack, api, jobs)
                row[f"stack{b}"], calls[b] = res["images_per_s"], res["calls"]
            print(
                f"round {r + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True
            )
            for k, v in row.items():
                best[k] = max(best.get(k, 0.0), v)
        sizes = [int(x) for x in args.sweep.split(",")]
        # The bare sweep at each CPU precision (bf16 too, where the CPU has it natively).
        pipes = {"fp32": bare}
        for dt in cpu_dtypes():
            if dt != "fp32":
                pipes[dt] = Bare(models_dir, steps=args.steps, size=args.size, cpu_dtype=dt)
        sweep = {
            dt: {b: p.images_per_s(batch=b, images=args.images) for b in sizes}
            for dt, p in pipes.items()
        }

    print(
        f"\ntiny-sd, {args.size}x{args.size}, {args.steps} steps, {args.images} images, "
        f"best of {args.rounds} interleaved rounds, torch threads "
        f"{args.torch_threads or 'default'}\n"
    )
    print(
        table(
            [
                ["bare pipeline", 1, best["bare1"], args.images],
                ["bare pipeline", 8, best["bare8"], -(-args.images // 8)],
                ["through stack", 1, best["stack1"], calls[1]],
                ["through stack", 8, best["stack8"], calls[8]],
            ],
            ["path", "max batch", "images/s", "pipeline calls"],
        )
    )
    print("\nbare pipeline, one pass per batch size (images/s) and CPU dtype")
    print(
        table(
            [[b, *(sweep[dt][b] for dt in sweep)] for b in sizes],
            ["batch", *(f"{dt} images/s" for dt in sweep)],
        )
    )
    save(
        "batching",
        {
            "size": args.size,
            "steps": args.steps,
            "images": args.images,
            "torch_threads": args.torch_threads,
            "best": best,
            "calls": calls,
            "bare_sweep": sweep,
        },
    )
    gain_bare = best["bare8"] / best["bare1"]
    gain_stack = best["stack8"] / best["stack1"]
    print("\nratios")
    print(
        table(
            [
                ["stack/bare at batch 1", best["stack1"] / best["bare1"]],
                ["stack/bare at batch 8", best["stack8"] / best["bare8"]],
                ["batched/unbatched, bare", gain_bare],
                ["batched/unbatched, stack", gain_stack],
                ["stack's share of the bare batching gain", gain_stack / gain_bare],
                *(
                    [f"bf16/fp32, bare, batch {b}", sweep["bf16"][b] / sweep["fp32"][b]]
                    for b in (1, 8)
                    if "bf16" in sweep and b in sizes
                ),
            ],
            ["ratio", "value"],
        )
    )
    ratio8 = best["stack8"] / best["bare8"]
    verdict = "met" if ratio8 >= 0.95 else "not met"
    print(f"\ntarget: stack/bare at max batch 8 within 5% (≥ 0.95): {ratio8:.3f}, {verdict}")


if __name__ == "__main__":
    main()
