"""Where a job's time goes: through the stack vs the bare pipeline at the same batch size.

    python -m bench.overhead [--batch 8] [--images 32]

Runs the bare tiny-sd pipeline and a burst through API → Celery → worker → S3 at the
same batch size (interleaved, best of 3 rounds), then splits each job's wall time
from its record: queue wait (submit → a worker thread starts it), engine (gathering +
waiting for the batch it rides in), pipeline (its batch's call), encode + upload,
and bookkeeping (the rest: record writes, Celery ack).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench.batching import MODEL, Bare
from bench.common import burst, save, stack_with_worker, table, tiny_models


def main() -> None:
    ap = argparse.ArgumentParser(description="Stack overhead and the split of a job's time")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models-dir", type=Path, default=None)
    args = ap.parse_args()
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
    save("overhead", {"bare": bare_best, "stack": stack_best, "split": means, "batch": args.batch})


if __name__ == "__main__":
    main()
