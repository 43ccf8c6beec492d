"""Kiln vs the classic single-job design on the same bursts of 32 jobs.

    python -m bench.baseline [--jobs 32] [--steps 8] [--rounds 3] [--cpu-dtypes fp32,bf16]
                             [--torch-threads N]

The baseline (bench/classic.py) is one worker process taking one job at a time from
one queue, without batching: the design of most tutorial APIs. Both run the same tiny
SD pipeline with the same torch settings on this machine, on a burst of same-size jobs
(64²) and a burst of mixed sizes (64², 96², 128²), at each CPU precision (fp32, and
bf16 where the CPU multiplies it in hardware: ``KILN_CPU_DTYPE``, used by both designs
alike). The two designs take turns for ``--rounds`` rounds (``--mixed-rounds`` for the
mixed burst) and the best round of each is kept (these VMs are noisy). Both
are watched the same way: one pipelined Redis read every 20 ms. Prints throughput and
p50/p95 completion time for each, and the Kiln/classic ratios last.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import redis

from bench.common import (
    burst,
    cpu_dtypes,
    percentile,
    save,
    stack_with_worker,
    table,
    tiny_models,
    torch_threads,
    watch,
)
from harness.stack import BIN, Stack

MODEL = "tiny-sd"


def succeeded(meta: str) -> bool:
    """A classic task's stored result: True once it succeeded; a failure stops the bench."""
    if json.loads(meta)["status"] != "SUCCESS":
        raise RuntimeError(f"classic job failed: {meta[:300]}")
    return True


def classic_burst(stack: Stack, jobs: list[dict[str, Any]], *, timeout: float = 600) -> dict:
    """Send the burst to the classic queue; time each job until its result is stored."""
    from celery import Celery

    app = Celery(
        "classic-client", broker=stack.env["KILN_BROKER_URL"], backend=stack.env["KILN_REDIS_URL"]
    )
    store = redis.Redis.from_url(stack.env["KILN_REDIS_URL"], decode_responses=True)
    t0 = time.perf_counter()
    ids = [
        app.send_task(
            "classic.generate",
            queue="classic",
            kwargs={k: j[k] for k in ("prompt", "seed", "width", "height", "steps")},
        ).id
        for j in jobs
    ]
    done = watch(
        store,
        ids,
        t0=t0,
        timeout=timeout,
        finished=succeeded,
        read=lambda pipe, task_id: pipe.get(f"celery-task-meta-{task_id}"),
    )
    lat = list(done.values())
    return {
        "wall_s": max(lat),
        "images_per_s": len(jobs) / max(lat),
        "p50_s": percentile(lat, 0.5),
        "p95_s": percentile(lat, 0.95),
    }


def run_dtype(
    cpu_dtype: str,
    bursts: dict[str, list[dict[str, Any]]],
    *,
    models_dir: Path,
    rounds: dict[str, int],
    env: dict[str, str] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Both designs at one CPU precision: alternating rounds, the best of each kept; and
    the bare pipeline's own batch-8/batch-1 gain (this process, between the rounds of
    the same-size burst: the target Kiln/classic is held to)."""
    from bench.batching import Bare

    keys = ("images_per_s", "wall_s", "p50_s", "p95_s")
    best: dict[str, dict[str, dict[str, float]]] = {n: {} for n in bursts}
    best["bare"] = {}
    env = {**(env or {}), "KILN_CPU_DTYPE": cpu_dtype}
    with stack_with_worker(MODEL, models_dir=models_dir, env=env) as (
        stack,
        api,
    ):
        classic = stack.spawn(
            "classic",
            [
                str(BIN / "celery"),
                "-A",
                "bench.classic",
                "worker",
                "--pool=solo",
                "--queues=classic",
                "--prefetch-multiplier=1",
                "--loglevel=WARNING",
            ],
        )
        first = next(iter(bursts))
        bare = Bare(models_dir, steps=jobs_steps(bursts), size=64, cpu_dtype=cpu_dtype)
        for name, jobs in bursts.items():
            burst(stack, api, jobs)  # warm both paths at these sizes
            classic_burst(stack, jobs[:6])
            for r in range(rounds[name]):
                runs = {"kiln": burst(stack, api, jobs), "classic": classic_burst(stack, jobs)}
                print(
                    f"{cpu_dtype}, {name}, round {r + 1}: "
                    + ", ".join(f"{d} {v['images_per_s']:.2f} images/s" for d, v in runs.items()),
                    flush=True,
                )
                for design, res in runs.items():
                    if res["images_per_s"] > best[name].get(design, {}).get("images_per_s", 0):
                        best[name][design] = {k: res[k] for k in keys}
                if name == first:
                    for b in (1, 8):
                        rate = bare.images_per_s(batch=b, images=len(jobs))
                        best["bare"][f"batch{b}"] = {
                            "images_per_s": max(
                                rate, best["bare"].get(f"batch{b}", {}).get("images_per_s", 0)
                            )
                        }
        classic.stop()
    return best


def jobs_steps(bursts: dict[str, list[dict[str, Any]]]) -> int:
    return int(next(iter(bursts.values()))[0]["steps"])


def main() -> None:
    ap = argparse.ArgumentParser(description="Kiln vs the classic single-job design")
    ap.add_argument("--jobs", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the same-size burst")
    ap.add_argument("--mixed-rounds", type=int, default=2, help="rounds of the mixed burst")
    ap.add_argument(
        "--cpu-dtypes",
        default="",
        help="comma-separated KILN_CPU_DTYPE values (default: fp32, and bf16 "
        "when the CPU has it in hardware)",
    )
    ap.add_argument("--models-dir", type=Path, default=None)
    ap.add_argument(
        "--torch-threads", type=int, default=0, help="both designs' workers (0: torch's)"
    )
    args = ap.parse_args()
    threads_env = torch_threads(args.torch_threads)
    models_dir = tiny_models(args.models_dir)
    sizes = {"same size (64²)": [64], "mixed (64², 96², 128²)": [64, 96, 128]}
    bursts = {
        name: [
            dict(
                prompt=f"a red fox {i}",
                model=MODEL,
                steps=args.steps,
                seed=i,
                width=s[i % len(s)],
                height=s[i % len(s)],
            )
            for i in range(args.jobs)
        ]
        for name, s in sizes.items()
    }
    rounds = dict(zip(bursts, (args.rounds, args.mixed_rounds), strict=True))
    results = {
        dt: run_dtype(dt, bursts, models_dir=models_dir, rounds=rounds, env=threads_env)
        for dt in cpu_dtypes(args.cpu_dtypes)
    }
    print(
        f"\n{args.jobs} jobs at once, {MODEL}, {args.steps} steps, 2-core CPU, "
        f"best of {args.rounds} (same size) and {args.mixed_rounds} (mixed) alternating "
        f"rounds; both designs load the model the same way at each CPU precision\n"
    )
    rows = [
        [dt, name, label, r[d]["images_per_s"], r[d]["p50_s"], r[d]["p95_s"]]
        for dt, best in results.items()
        for name, r in best.items()
        if name != "bare"
        for d, label in (("classic", "classic (1 job at a time)"), ("kiln", "kiln (max_batch 8)"))
    ]
    print(table(rows, ["cpu dtype", "burst", "design", "images/s", "p50 done (s)", "p95 done (s)"]))
    print("\nratios (kiln / classic)")
    print(
        table(
            [
                [
                    dt,
                    name,
                    r["kiln"]["images_per_s"] / r["classic"]["images_per_s"],
                    r["classic"]["p50_s"] / r["kiln"]["p50_s"],
                    r["classic"]["p95_s"] / r["kiln"]["p95_s"],
                ]
                for dt, best in results.items()
                for name, r in best.items()
                if name != "bare"
            ],
            ["cpu dtype", "burst", "throughput ×", "p50 faster ×", "p95 faster ×"],
        )
    )
    same = next(iter(bursts))
    print("\ntarget: kiln/classic on the same-size burst ≥ 0.95 × the bare batch-8/batch-1 gain")
    rows = []
    for dt, best in results.items():
        gain = best["bare"]["batch8"]["images_per_s"] / best["bare"]["batch1"]["images_per_s"]
        ratio = best[same]["kiln"]["images_per_s"] / best[same]["classic"]["images_per_s"]
        rows.append(
            [
                dt,
                gain,
                0.95 * gain,
                ratio,
                ratio / gain,
                "met" if ratio >= 0.95 * gain else "not met",
            ]
        )
    print(
        table(
            rows,
            ["cpu dtype", "bare 8/1 gain", "target", "kiln/classic", "share of gain", "verdict"],
        )
    )
    save(
        "baseline",
        {
            "jobs": args.jobs,
            "steps": args.steps,
            "rounds": rounds,
            "torch_threads": args.torch_threads,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
