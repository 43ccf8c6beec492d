"""Chaos: a burst of tiny jobs while the fleet's parts fail on a schedule.

A stack of its own (Valkey with an append-only file, an S3 server, the API, two
tiny-sd workers, the webhooks worker, a webhook receiver) takes a steady stream of
jobs, each with a webhook, while these faults are injected by stopping real
processes:

1. SIGKILL a tiny-sd worker mid-batch (a new one starts 3 s later);
2. stop Valkey (job store and broker) for ``--store-outage`` seconds;
3. stop the S3 server for ``--s3-outage`` seconds;
4. SIGKILL the webhooks worker (it starts again 2 s later).

Submits that get 503 during an outage are tried again (a 503 is not an accepted
job). Prints jobs accepted, succeeded, failed, lost (accepted, never ended),
duplicated (more than one ``succeeded`` event), webhooks missing, the time from each
fault to the first job finished after it, and job latency p50/p99 for jobs that
lived through a fault and for those that did not.

    python -m bench.chaos [--jobs 200] [--store-outage 20] [--s3-outage 30]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import percentile, save, table, tiny_models
from harness.http import KilnHTTP
from harness.stack import Stack, wait_for
from harness.webhooks import Receiver
from tasks.jobs.store import TERMINAL, JobStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--rate", type=float, default=2.5, help="jobs submitted per second")
    ap.add_argument("--store-outage", type=float, default=20.0)
    ap.add_argument("--s3-outage", type=float, default=30.0)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="kiln-chaos-"))
    receiver = Receiver()
    stack = Stack(
        tmp / "stack",
        models_dir=tiny_models(tmp / "models"),
        persist=True,
        env_overrides={
            "KILN_WEBHOOK_ALLOW_PRIVATE": "true",
            "KILN_WEBHOOK_TIMEOUT_S": "2",
            "KILN_LOG_LEVEL": "WARNING",
        },
    )
    try:
        stack.start_servers()
        stack.start_fleet("tiny-sd", workers=2)
        report = run(stack, receiver, args)
    finally:
        stack.close()
        receiver.close()
    save("chaos", report)
    print_report(report)


def run(stack: Stack, receiver: Receiver, args: argparse.Namespace) -> dict[str, Any]:
    api = KilnHTTP(stack.api_url)
    store = JobStore(stack.env["KILN_REDIS_URL"])
    accepted: dict[str, float] = {}
    refused = [0]
    t0 = time.time()
    done_submitting = threading.Event()

    def submit_all() -> None:
        for i in range(args.jobs):
            due = t0 + i / args.rate
            time.sleep(max(0.0, due - time.time()))
            body = {
                "prompt": f"chaos {i}",
                "model": "tiny-sd",
                "steps": 4,
                "seed": i,
                "webhook_url": receiver.url + "/ok",
            }
            while True:
                try:
                    r = api.post("/v1/jobs", json=body)
                except requests.RequestException:
                    r = None
                if r is not None and r.status_code == 202:
                    accepted[r.json()["id"]] = time.time()
                    break
                refused[0] += 1
                time.sleep(0.5)
        done_submitting.set()

    threading.Thread(target=submit_all, daemon=True).start()
    faults = inject_faults(stack, store, t0, args)
    done_submitting.wait()
    records = wait_all(store, list(accepted), timeout=900)
    return summarize(store, receiver, accepted, records, faults, refused[0], t0)


def inject_faults(
    stack: Stack, store: JobStore, t0: float, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """The schedule, in seconds from the first submit; returns what was done and when."""
    faults: list[dict[str, Any]] = []

    def at(offset: float) -> None:
        time.sleep(max(0.0, t0 + offset - time.time()))

    at(8)
    victim = next(
        (r.get("worker") for r in map(store.get, _running(store)) if r and r.get("worker")),
        None,
    )
    proc = _proc_of(stack, victim) if victim else stack.proc("w1")
    proc.kill()
    faults.append({"fault": "worker SIGKILL", "start": time.time(), "end": time.time()})
    time.sleep(3)
    stack.restart(proc)

    at(20)
    valkey = stack.proc("valkey")
    valkey.stop()
    start = time.time()
    time.sleep(args.store_outage)
    stack.restart(valkey)
    wait_for(lambda: store.redis.ping(), timeout=30, what="valkey back")
    faults.append(
        {
            "fault": f"job store + broker down {args.store_outage:g}s",
            "start": start,
            "end": time.time(),
        }
    )

    at(20 + args.store_outage + 15)
    s3 = stack.proc("s3")
    s3.stop()
    start = time.time()
    time.sleep(args.s3_outage)
    stack.restart(s3)
    faults.append({"fault": f"S3 down {args.s3_outage:g}s", "start": start, "end": time.time()})

    at(20 + args.store_outage + 15 + args.s3_outage + 10)
    hooks = stack.proc("webhooks")
    hooks.kill()
    faults.append({"fault": "webhooks worker SIGKILL", "start": time.time(), "end": time.time()})
    time.sleep(2)
    stack.restart(hooks)
    return faults


def _running(store: JobStore) -> list[str]:
    from tasks.jobs import bookkeeping as bk

    return list(bk.held_jobs(store.redis, "tiny-sd"))


def _proc_of(stack: Stack, worker: str) -> Any:
    pid = int(worker.split("@")[1].split(".")[1])
    return next(p for p in stack.procs if p.popen.pid == pid)


def wait_all(store: JobStore, ids: list[str], *, timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    records: dict[str, dict] = {}
    while time.monotonic() < deadline:
        for job_id in ids:
            if job_id not in records:
                try:
                    rec = store.get(job_id)
                except Exception:
                    rec = None
                if rec and rec.get("status") in TERMINAL:
                    records[job_id] = rec
        if len(records) == len(ids):
            break
        time.sleep(0.5)
    return records


def summarize(
    store: JobStore,
    receiver: Receiver,
    accepted: dict[str, float],
    records: dict[str, dict],
    faults: list[dict[str, Any]],
    refused: int,
    t0: float,
) -> dict[str, Any]:
    succeeded = [r for r in records.values() if r["status"] == "succeeded"]
    duplicated = [j for j in records if [k for _, k, _ in store.events(j)].count("succeeded") > 1]
    hooked = {json.loads(body)["data"]["id"] for _, _, body in receiver.hits.get("/ok", [])}
    ends = sorted(r["completed_at"] for r in records.values() if r.get("completed_at"))
    for f in faults:
        after = [t for t in ends if t > f["start"]]
        f["first_job_done_after_s"] = round(after[0] - f["start"], 2) if after else None

    def overlaps(r: dict) -> bool:
        return any(r["created_at"] <= f["end"] and r["completed_at"] >= f["start"] for f in faults)

    lat_fault = [r["completed_at"] - r["created_at"] for r in succeeded if overlaps(r)]
    lat_calm = [r["completed_at"] - r["created_at"] for r in succeeded if not overlaps(r)]
    return {
        "accepted": len(accepted),
        "refused_503": refused,
        "succeeded": len(succeeded),
        "failed": len([r for r in records.values() if r["status"] != "succeeded"]),
        "lost": len(accepted) - len(records),
        "duplicated": len(duplicated),
        "webhooks_missing": len([j for j in records if j not in hooked]),
        "faults": [
            {**f, "start": round(f["start"] - t0, 1), "end": round(f["end"] - t0, 1)}
            for f in faults
        ],
        "latency": {
            "calm": {
                "jobs": len(lat_calm),
                "p50_s": percentile(lat_calm, 0.5),
                "p99_s": percentile(lat_calm, 0.99),
            },
            "fault": {
                "jobs": len(lat_fault),
                "p50_s": percentile(lat_fault, 0.5),
                "p99_s": percentile(lat_fault, 0.99),
            },
        },
    }


def print_report(report: dict[str, Any]) -> None:
    keys = (
        "accepted",
        "succeeded",
        "failed",
        "lost",
        "duplicated",
        "webhooks_missing",
        "refused_503",
    )
    print(table([[k, report[k]] for k in keys], ["jobs", "count"]))
    print()
    rows = [
        [f["fault"], f["start"], f["end"], f["first_job_done_after_s"]] for f in report["faults"]
    ]
    print(table(rows, ["fault", "at s", "until s", "first job done after (s)"]))
    print()
    lat = report["latency"]
    rows = [[k, v["jobs"], v["p50_s"], v["p99_s"]] for k, v in lat.items()]
    print(table(rows, ["jobs", "count", "p50 s", "p99 s"]))
    print(f"\nlost {report['lost']}, duplicated {report['duplicated']}")


if __name__ == "__main__":
    main()
