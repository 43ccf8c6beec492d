"""Where a job's time goes: through the stack vs the bare pipeline at the same batch size.

    python -m bench.overhead [--batch 8] [--images 32] [--encode-only] [--encode-size 1024]

First, what each output format costs to encode at 1024² (the worker's own ``encode``,
parameters inside): best of 5 runs, time and bytes, on two pictures: noise (what the
random-weight stand-ins make, the worst case for every codec) and a smooth synthetic
picture with fine texture (closer to a photograph).

Runs the bare tiny-sd pipeline and a burst through API → Celery → worker → S3 at the
same batch size (interleaved, best of 3 rounds), then splits each job's wall time
from its record: queue wait (submit → a worker thread starts it), engine (gathering +
waiting for the batch it rides in), pipeline (its batch's call), encode + upload,
and bookkeeping (the rest: record writes, Celery ack).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from bench.batching import MODEL, Bare
from bench.common import burst, save, stack_with_worker, table, tiny_models

FORMATS = (("png", None), ("jpeg", 100), ("jpeg", 85), ("webp", 100), ("webp", 85))


def pictures(size: int) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    smooth = np.stack(
        [np.sin(6 * x + 3 * y) * 0.5 + 0.5, np.cos(32 * x * y) * 0.5 + 0.5, (x + y) / 2], -1
    )
    texture = rng.normal(0, 6, smooth.shape)
    return {
        "noise": Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
        "smooth": Image.fromarray(np.clip(smooth * 255 + texture, 0, 255).astype("uint8")),
    }


def encode_costs(size: int, *, repeats: int = 5) -> list[dict[str, Any]]:
    """Per format, compression and picture: best-of-``repeats`` ms and bytes."""
    from tasks.worker.images import encode

    meta = {"prompt": "a red fox in the snow", "seed": 7, "steps": 30, "model": "sdxl"}
    rows = []
    for kind, image in pictures(size).items():
        for fmt, compression in FORMATS:
            best, data = float("inf"), b""
            for _ in range(repeats):
                t0 = time.perf_counter()
                data = encode(image, meta, fmt=fmt, compression=compression)
                best = min(best, time.perf_counter() - t0)
            rows.append(
                {
                    "picture": kind,
                    "format": fmt,
                    "compression": compression,
                    "ms": 1000 * best,
                    "kib": len(data) / 1024,
                }
            )
    return rows


def print_encode(rows: list[dict[str, Any]], size: int) -> None:
    png = {r["picture"]: r for r in rows if r["format"] == "png"}
    print(f"\nencoding one {size}x{size} image (best of 5; time and size against PNG)\n")
    print(
        table(
            [
                [
                    r["picture"],
                    r["format"],
                    r["compression"] if r["compression"] is not None else "-",
                    r["ms"],
                    r["kib"],
                    float(r["ms"]) / float(png[r["picture"]]["ms"]),
                    float(r["kib"]) / float(png[r["picture"]]["kib"]),
                ]
                for r in rows
            ],
            ["picture", "format", "compression", "ms", "KiB", "time/PNG", "size/PNG"],
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description="Stack overhead and the split of a job's time")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models-dir", type=Path, default=None)
    ap.add_argument("--encode-size", type=int, default=1024)
    ap.add_argument("--encode-only", action="store_true", help="only the format costs")
    args = ap.parse_args()
    encoding = encode_costs(args.encode_size)
    print_encode(encoding, args.encode_size)
    if args.encode_only:
        save("encode", {"size": args.encode_size, "rows": encoding})
        return
    models_dir = tiny_models(args.models_dir)
    jobs = [
        dict(prompt=f"a red fox {i}", model=MODEL, steps=args.steps, seed=i)
        for i in range(args.images)
    ]
    bare_best, stack_best, records = 0.0, 0.0, {}
    with stack_with_worker(MODEL, models_dir=models_dir, max_batch=args.batch, max_wait_ms=100) as (
        stack,
        api,
    ):
        burst(stack, api, jobs)
        bare = Bare(models_dir, steps=args.steps, size=64)
        for _ in range(args.rounds):
            bare_best = max(bare_best, bare.images_per_s(batch=args.batch, images=args.images))
            res = burst(stack, api, jobs)
            if res["images_per_s"] > stack_best:
                stack_best, records = res["images_per_s"], res["records"]

    parts: dict[str, list[float]] = {
        k: []
        for k in (
            "queue wait",
            "engine wait",
            "pipeline",
            "encode + upload",
            "bookkeeping",
            "total",
        )
    }
    for r in records.values():
        total = r["completed_at"] - r["created_at"]
        queue = r["started_at"] - r["created_at"]
        run, upload = r["run_s"], r["upload_s"]
        # The engine's share: from the task thread's hand-off to the batch's end, minus the
        # call itself (gathering, and waiting for the batch ahead on the GPU thread).
        active = r["completed_at"] - r["started_at"]
        engine = max(0.0, active - run - upload)
        parts["queue wait"].append(queue)
        parts["pipeline"].append(run)
        parts["encode + upload"].append(upload)
        parts["engine wait"].append(engine)
        parts["bookkeeping"].append(max(0.0, total - queue - run - upload - engine))
        parts["total"].append(total)
    means = {k: statistics.mean(v) for k, v in parts.items()}
    print(
        f"\ntiny-sd 64x64, {args.steps} steps, {args.images} jobs, max_batch {args.batch}, "
        f"best of {args.rounds}\n"
    )
    print(
        table([["bare pipeline", bare_best], ["through stack", stack_best]], ["path", "images/s"])
    )
    print("\nmean split of a job's wall time (a burst: most of it is waiting for batches ahead)")
    print(
        table([[k, v, v / means["total"]] for k, v in means.items()], ["part", "seconds", "share"])
    )
    print("\nratios")
    print(
        table(
            [
                ["stack/bare", stack_best / bare_best],
                ["encode+upload per image (ms)", 1000 * means["encode + upload"]],
            ],
            ["ratio", "value"],
        )
    )
    save(
        "overhead",
        {"bare": bare_best, "stack": stack_best, "split": means, "batch": args.batch},
    )
    save("encode", {"size": args.encode_size, "rows": encoding})


if __name__ == "__main__":
    main()
