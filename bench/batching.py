"""Batching through the whole stack vs the bare pipeline, in one run.

    python -m bench.batching [--images 32] [--steps 8] [--size 64]

Runs the bare tiny-sd pipeline at batch 1 and 8 in this process, then 32 jobs
through API → Celery → worker → S3 with max_batch 1 and 8, and prints images/s
for all four and the ratios stack/bare and batched/unbatched.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import burst, stack_with_worker, table

MODEL = "tiny-sd"


def bare(models_dir: Path, *, batch: int, images: int, steps: int, size: int) -> float:
    """Images/s of the bare pipeline: load, warm up and every call in this thread."""
    from config.settings import from_env
    from pipelines.batch import Item, Params, run_batch
    from pipelines.loader import load_model, warm_up
    from pipelines.registry import Registry

    model = Registry.from_file(from_env({}).models_file)[MODEL]
    loaded = load_model(model, models_dir=models_dir)
    warm_up(loaded)
    params = Params(
        width=size, height=size, steps=steps, guidance_scale=7.5, scheduler=model.scheduler
    )
    items = [
        Item(prompt=f"a red fox, take {i}", negative_prompt=None, seed=i) for i in range(images)
    ]
    run_batch(loaded, params, items[:batch])  # same-shape warm-up
    t0 = time.perf_counter()
    for i in range(0, images, batch):
        run_batch(loaded, params, items[i : i + batch])
    return images / (time.perf_counter() - t0)


def through_stack(models_dir: Path, *, batch: int, images: int, steps: int, size: int) -> dict:
    jobs = [
        dict(
            prompt=f"a red fox, take {i}", model=MODEL, width=size, height=size, steps=steps, seed=i
        )
        for i in range(images)
    ]
    with stack_with_worker(MODEL, models_dir=models_dir, max_batch=batch, max_wait_ms=100) as (
        _stack,
        api,
    ):
        burst(api, jobs[: min(batch, 4)])  # warm the path end to end
        return burst(api, jobs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--models-dir", type=Path, default=None)
    args = ap.parse_args()

    from pipelines.tiny import make_all

    models_dir = args.models_dir or Path(tempfile.mkdtemp(prefix="kiln-models-"))
    make_all(models_dir)
    kw = dict(images=args.images, steps=args.steps, size=args.size)

    bare1 = bare(models_dir, batch=1, **kw)
    bare8 = bare(models_dir, batch=8, **kw)
    st1 = through_stack(models_dir, batch=1, **kw)
    st8 = through_stack(models_dir, batch=8, **kw)

    print(
        f"\ntiny-sd, {args.size}x{args.size}, {args.steps} steps, {args.images} images "
        "(2-core CPU unless stated)\n"
    )
    print(
        table(
            [
                ["bare pipeline", 1, bare1, "-"],
                ["bare pipeline", 8, bare8, "-"],
                ["through stack", 1, st1["images_per_s"], st1["calls"]],
                ["through stack", 8, st8["images_per_s"], st8["calls"]],
            ],
            ["path", "max batch", "images/s", "pipeline calls"],
        )
    )
    print("\nratios")
    print(
        table(
            [
                ["stack/bare at batch 1", st1["images_per_s"] / bare1],
                ["stack/bare at batch 8", st8["images_per_s"] / bare8],
                ["batched/unbatched, bare", bare8 / bare1],
                ["batched/unbatched, stack", st8["images_per_s"] / st1["images_per_s"]],
                [
                    "stack keeps of bare batching gain",
                    (st8["images_per_s"] / st1["images_per_s"]) / (bare8 / bare1),
                ],
            ],
            ["ratio", "value"],
        )
    )


if __name__ == "__main__":
    main()
