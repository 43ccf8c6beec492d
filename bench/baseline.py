"""Kiln vs the classic single-job design on the same bursts of 32 jobs.

    python -m bench.baseline [--jobs 32] [--steps 8]

The baseline (bench/classic.py) is one worker process taking one job at a time from
one queue, without batching: the design of most tutorial APIs. Both run the same tiny
SD pipeline on this machine, one after the other, on a burst of same-size jobs (64²)
and a burst of mixed sizes (64², 96², 128²). Prints throughput and p50/p95 completion
time for each, and Kiln/classic ratios.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import burst, percentile, save, stack_with_worker, table
from tests.stack import BIN


def classic_burst(stack, jobs: list[dict]) -> dict:
    from celery import Celery

    app = Celery("classic-client", broker=stack.env["KILN_BROKER_URL"],
                 backend=stack.env["KILN_REDIS_URL"])
    t0 = time.perf_counter()
    results = [app.send_task("classic.generate", queue="classic",
                             kwargs=dict(prompt=j["prompt"], seed=j["seed"], width=j["width"],
                                         height=j["height"], steps=j["steps"]))
               for j in jobs]
    done: dict[str, float] = {}
    deadline = time.monotonic() + 600
    while len(done) < len(results) and time.monotonic() < deadline:
        for r in results:
            if r.id not in done and r.ready():
                r.get()
                done[r.id] = time.perf_counter() - t0
        time.sleep(0.02)
    lat = list(done.values())
    return {"images_per_s": len(jobs) / max(lat), "p50_s": percentile(lat, 0.5),
            "p95_s": percentile(lat, 0.95)}


def main() -> None:
    ap = argparse.ArgumentParser(description="Kiln vs the classic single-job design")
    ap.add_argument("--jobs", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--models-dir", type=Path, default=None)
    args = ap.parse_args()
    from pipelines.tiny import make_all

    models_dir = args.models_dir or Path(tempfile.mkdtemp(prefix="kiln-models-"))
    make_all(models_dir)
    sizes = {"same size (64²)": [64], "mixed (64², 96², 128²)": [64, 96, 128]}
    bursts = {name: [dict(prompt=f"a red fox {i}", model="tiny-sd", steps=args.steps, seed=i,
                          width=s[i % len(s)], height=s[i % len(s)])
                     for i in range(args.jobs)] for name, s in sizes.items()}
    rows, out = [], {}
    with stack_with_worker("tiny-sd", models_dir=models_dir, max_batch=8,
                           max_wait_ms=100) as (stack, api):
        classic = stack.spawn("classic", [str(BIN / "celery"), "-A", "bench.classic", "worker",
                                          "--pool=solo", "--queues=classic",
                                          "--prefetch-multiplier=1", "--loglevel=WARNING"])
        for name, jobs in bursts.items():
            burst(stack, api, jobs)  # warm both paths at these sizes
            classic_burst(stack, jobs[:3])
            kiln = burst(stack, api, jobs)
            base = classic_burst(stack, jobs)
            out[name] = {"kiln": {k: kiln[k] for k in ("images_per_s", "p50_s", "p95_s")},
                         "classic": base}
            rows += [[name, "classic (1 job at a time)", base["images_per_s"], base["p50_s"],
                      base["p95_s"]],
                     [name, "kiln (max_batch 8)", kiln["images_per_s"], kiln["p50_s"],
                      kiln["p95_s"]]]
        classic.stop()
    print(f"\n{args.jobs} jobs at once, tiny-sd, {args.steps} steps, 2-core CPU\n")
    print(table(rows, ["burst", "design", "images/s", "p50 done (s)", "p95 done (s)"]))
    print("\nratios (kiln / classic)")
    print(table([[name, r["kiln"]["images_per_s"] / r["classic"]["images_per_s"],
                  r["classic"]["p95_s"] / r["kiln"]["p95_s"]] for name, r in out.items()],
                ["burst", "throughput ×", "p95 faster ×"]))
    save("baseline", out)


if __name__ == "__main__":
    main()
