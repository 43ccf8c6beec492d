"""One worker serving four tiny models against one single-model worker per model.

    python -m bench.multiplex [--jobs 200] [--rate 25] [--quick] [--steps 2] [--size 64]
                              [--zipf 1.1] [--seed 0] [--load-delay 2] [--torch-threads 1]

Four models (``mx-a`` … ``mx-d``, all the ``sd-mini`` stand-in, in a models.yaml this
bench writes) get one skewed trace: each job's model drawn from a Zipf law (s 1.1,
``mx-a`` the most popular), submitted at a fixed rate (by default about 2.5× what one
worker serves on 2 cores, so every design runs flat out). The baseline runs each
model's share of it (re-timed at the same rate) through its own ``kiln worker --model
M``, one share after another on the same cores (the four start together; three idle).
Each case runs the whole trace through one ``kiln worker --models mx-a,mx-b,mx-c,mx-d
--max-resident R``: all four resident, room for two, and room for two with
``KILN_LOAD_DELAY_S`` added to every load.

Every worker is warmed up, its first models loaded, before it is timed. A design's time
runs from its first planned submit to its last job's end; the baseline's is the sum over
its shares, so its model switches cost it nothing, and one baseline run serves every
case (a ``--model`` worker loads before its share, any load delay included, before the
clock starts). Latency runs from a job's planned submit to its end (``completed_at`` in
its record, the same clock). Kiln's loads and evictions are the multiplexed worker's own
counters, its loads at start included; the optimum is Belady's for the trace with that
room, cold loads included. Prints jobs/s, p50/p99 per model, loads, evictions and the
ratios; asserts none.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import save, table, torch_threads, watch
from bench.multiplex_trace import (
    Arrival,
    Done,
    Outcome,
    belady_loads,
    burst,
    make_trace,
    per_model,
    ratio_rows,
    shares,
    span_s,
)
from harness.http import KilnHTTP
from harness.metrics import Samples, scrape
from harness.stack import Proc, Stack, free_port, stop_all, tiny_models_file, wait_for
from tasks.jobs import bookkeeping as bk

MODELS = ("mx-a", "mx-b", "mx-c", "mx-d")
TINY = "sd-mini"


@dataclass(frozen=True)
class Case:
    name: str
    resident: int  # --max-resident
    load_delay_s: float  # KILN_LOAD_DELAY_S

    @property
    def fits(self) -> bool:
        return self.resident >= len(MODELS)


def run_trace(
    stack: Stack, api: KilnHTTP, trace: Sequence[Arrival], *, size: int, steps: int
) -> list[Done]:
    """Submit each job at its planned time (open loop), wait for all, read their records."""
    t0 = time.time() + 0.5

    def submit(a: Arrival) -> str:
        time.sleep(max(0.0, t0 + a.at_s - time.time()))
        job = api.submit(
            prompt=f"a kiln, job {a.index}",
            model=a.model,
            width=size,
            height=size,
            steps=steps,
            seed=a.index,
        )
        return str(job["id"])

    pool = ThreadPoolExecutor(8)
    try:
        ids = list(pool.map(submit, trace))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    watch(
        stack.redis(),
        ids,
        t0=0.0,
        timeout=900,
        read=lambda pipe, job_id: pipe.hget(bk.job_key(job_id), "status"),
        finished=lambda status: json.loads(status) in {"succeeded", "failed", "canceled"},
    )
    done = []
    for a, job_id in zip(trace, ids, strict=True):
        rec = api.get(f"/v1/jobs/{job_id}").json()
        if rec["status"] != "succeeded":
            raise RuntimeError(f"job {job_id} ({a.model}) {rec['status']}: {rec.get('error')}")
        done.append(
            Done(a.model, a.at_s, float(rec["completed_at"]) - t0, rec.get("load_wait_s") or 0.0)
        )
    return done


def metric(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels`` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= lbl)


def stop(stack: Stack, procs: list[Proc]) -> None:
    """Stop workers together and wait until no model counts one as ready."""
    stop_all(procs)
    stack.procs[:] = [p for p in stack.procs if p not in procs]
    wait_for(
        lambda: all(stack.ready_workers(m) == 0 for m in MODELS), timeout=30, what="workers gone"
    )


def run_single(
    stack: Stack, api: KilnHTTP, trace: Sequence[Arrival], *, rate: float, size: int, steps: int
) -> dict[str, Any]:
    """Each model's share through its own ``kiln worker --model M``, one share after
    another: the shares' spans summed. The four workers start (and warm up) together,
    so only one of them has jobs at a time and the others idle."""
    procs = {m: stack.start_worker(m, wait=False) for m in MODELS}
    for m, proc in procs.items():
        stack.wait_worker_ready(m, proc, timeout=300)
    run_trace(stack, api, burst(MODELS, each=8), size=size, steps=steps)
    done: list[Done] = []
    spans: dict[str, float] = {}
    for model, share in shares(trace, rate=rate).items():
        part = run_trace(stack, api, share, size=size, steps=steps)
        spans[model] = span_s(part)
        done += part
    stop(stack, list(procs.values()))
    time_s = sum(spans.values())
    return {
        "spans_s": spans,
        "time_s": time_s,
        "jobs_per_s": len(done) / time_s,
        "per_model": per_model(done),
    }


def run_multi(
    stack: Stack, api: KilnHTTP, trace: Sequence[Arrival], case: Case, *, size: int, steps: int
) -> dict[str, Any]:
    """The whole trace through one ``kiln worker --models …`` with room for ``resident``,
    started and its first models warmed up before the trace: the trace's span."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = stack.start_worker(
        MODELS[0],
        models=MODELS,
        name=f"worker-mx-{case.resident}",
        args=("--max-resident", str(case.resident), "--metrics-port", str(port)),
        env={"KILN_LOAD_DELAY_S": str(case.load_delay_s)},
        timeout=300,
    )
    run_trace(stack, api, burst(MODELS[: case.resident], each=8), size=size, steps=steps)
    at_start = scrape(url)
    done = run_trace(stack, api, trace, size=size, steps=steps)
    after = scrape(url)
    stop(stack, [proc])
    time_s = span_s(done)
    return {
        "time_s": time_s,
        "jobs_per_s": len(done) / time_s,
        "per_model": per_model(done),
        "loads": int(metric(after, "kiln_model_loads_total")),
        "loads_at_start": int(metric(at_start, "kiln_model_loads_total")),
        "loads_from_host": int(metric(after, "kiln_model_loads_total", source="host")),
        "evictions": int(metric(after, "kiln_model_evictions_total")),
        "load_wait_s": sum(d.load_wait_s for d in done) / len(done),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="60 jobs")
    ap.add_argument("--rate", type=float, default=25.0, help="jobs submitted per second")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--load-delay", type=float, default=2.0, help="its KILN_LOAD_DELAY_S")
    ap.add_argument("--torch-threads", type=int, default=1, help="every worker (0: torch's)")
    args = ap.parse_args(argv)
    jobs = 60 if args.quick else args.jobs
    trace = make_trace(MODELS, jobs=jobs, rate=args.rate, s=args.zipf, seed=args.seed)
    cases = [
        Case("all 4 fit", 4, 0.0),
        Case("2 of 4 fit", 2, 0.0),
        Case(f"2 of 4 fit, {args.load_delay:g} s loads", 2, args.load_delay),
    ]
    tmp = Path(tempfile.mkdtemp(prefix="kiln-bench-mx-"))
    defaults = {"width": args.size, "height": args.size, "steps": args.steps}
    models_dir = tiny_stand_in(tmp / "models")
    stack = Stack(
        tmp / "stack",
        models_dir=models_dir,
        env_overrides={
            "KILN_MODELS_FILE": str(
                tiny_models_file(tmp, list(MODELS), max_batch=8, defaults=defaults)
            ),
            "KILN_LOG_LEVEL": "WARNING",
            **torch_threads(args.torch_threads),
        },
    )
    shape = {"size": args.size, "steps": args.steps}
    results: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    try:
        stack.start_servers()
        stack.start_api()
        api = KilnHTTP(stack.api_url)
        single = run_single(stack, api, trace, rate=args.rate, **shape)
        print("single-model workers: done", flush=True)
        for case in cases:
            multi = run_multi(stack, api, trace, case, **shape)
            print(f"{case.name}: done", flush=True)
            results.append({"case": asdict(case), "multi": multi})
    finally:
        stack.close()
    report(trace, cases, single, results, args, time.perf_counter() - t_start)
    return 0


def tiny_stand_in(models_dir: Path) -> Path:
    from pipelines.tiny import make_tiny

    make_tiny(TINY, models_dir / TINY)
    return models_dir


def report(
    trace: Sequence[Arrival],
    cases: Sequence[Case],
    single: dict[str, Any],
    results: list[dict[str, Any]],
    args: argparse.Namespace,
    wall_s: float,
) -> None:
    counts = {m: sum(a.model == m for a in trace) for m in MODELS}
    print(
        f"\n{len(trace)} jobs at {args.rate:g}/s, Zipf s {args.zipf:g} (seed {args.seed}): "
        + ", ".join(f"{m} {n}" for m, n in counts.items())
        + f"; {args.size}², {args.steps} steps; whole run {wall_s:.0f} s\n"
    )
    seq = [a.model for a in trace]
    lat_rows: list[list[Any]] = [
        ["every case", "one worker per model", m, f["jobs"], f["p50_s"], f["p99_s"]]
        for m, f in single["per_model"].items()
    ]
    baseline = ["every case", "one worker per model", single["jobs_per_s"], single["time_s"]]
    tot_rows: list[list[Any]] = [[*baseline, len(counts), "-", "-", "-"]]
    outcomes = []
    for case, r in zip(cases, results, strict=True):
        multi = r["multi"]
        r["optimum"] = optimum = belady_loads(seq, case.resident)
        design = f"--models, room {case.resident}"
        for m, f in multi["per_model"].items():
            lat_rows.append([case.name, design, m, f["jobs"], f["p50_s"], f["p99_s"]])
        loads = f"{multi['loads']} ({multi['loads_at_start']} at start)"
        tot_rows.append([case.name, design, multi["jobs_per_s"], multi["time_s"], loads])
        tot_rows[-1] += [multi["evictions"], optimum, multi["load_wait_s"]]
        outcomes.append(
            Outcome(
                case.name,
                case.fits,
                multi["jobs_per_s"],
                single["jobs_per_s"],
                multi["loads"],
                optimum,
            )
        )
    print(table(lat_rows, ["case", "design", "model", "jobs", "p50 s", "p99 s"]))
    print()
    header = ["case", "design", "jobs/s", "time s", "loads", "evictions", "optimum loads"]
    print(table(tot_rows, [*header, "mean load wait s"]))
    print("\nratios (multiplexed / single-model workers; Kiln's loads / optimum)")
    print(table(ratio_rows(outcomes), ["case", "throughput ×", "loads ×", "target"]))
    save("multiplex", {"args": vars(args), "counts": counts, "single": single, "cases": results})


if __name__ == "__main__":
    sys.exit(main())
