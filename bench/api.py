"""API latency under load, workers stopped: only the API and Redis are measured.

    python -m bench.api [--seconds 20] [--clients 10,50,200]

For each level, N client threads submit jobs (POST /v1/jobs) in a loop for --seconds
(bounded, loopback only), then read jobs back (GET /v1/jobs/<id>) the same way; no
worker consumes the queue. Prints p50/p99 latency, requests/s and errors. The load
generator shares the machine's cores with the API: on 2 cores it is a large part of
what is measured.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.common import percentile, save, table
from tests.stack import Stack


def hammer(url: str, clients: int, seconds: float, *, method: str, job_ids: list[str]) -> dict:
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        http = requests.Session()
        n, mine = 0, []
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                if method == "POST":
                    r = http.post(f"{url}/v1/jobs", json={"prompt": f"load {i} {n}",
                                                           "model": "tiny-sd", "seed": n},
                                  timeout=10)
                    ok = r.status_code == 202
                    if ok and len(job_ids) < 1000:
                        job_ids.append(r.json()["id"])
                else:
                    r = http.get(f"{url}/v1/jobs/{job_ids[n % len(job_ids)]}", timeout=10)
                    ok = r.status_code == 200
            except requests.RequestException:
                ok = False
            mine.append(time.perf_counter() - t0)
            if not ok:
                with lock:
                    errors[0] += 1
            n += 1
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"requests": len(lat), "rps": len(lat) / seconds, "errors": errors[0],
            "p50_ms": 1000 * percentile(lat, 0.5), "p99_ms": 1000 * percentile(lat, 0.99)}


def main() -> None:
    ap = argparse.ArgumentParser(description="API latency under load")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", default="10,50,200")
    ap.add_argument("--api-workers", type=int, default=2)
    args = ap.parse_args()
    stack = Stack(Path(tempfile.mkdtemp(prefix="kiln-bench-api-")),
                  env_overrides={"KILN_LOG_LEVEL": "WARNING"})
    rows, out = [], {}
    try:
        stack.start_servers()
        url = stack.start_api(threads=64, workers=args.api_workers)
        job_ids: list[str] = []
        for clients in (int(c) for c in args.clients.split(",")):
            for method in ("POST", "GET"):
                res = hammer(url, clients, args.seconds, method=method, job_ids=job_ids)
                name = "submit (POST /v1/jobs)" if method == "POST" else "GET /v1/jobs/<id>"
                rows.append([name, clients, res["rps"], res["p50_ms"], res["p99_ms"],
                             res["errors"]])
                out[f"{method}-{clients}"] = res
                print(rows[-1], flush=True)
    finally:
        stack.close()
    print(f"\nAPI only (gunicorn {args.api_workers} workers x 64 threads), workers stopped, "
          f"{args.seconds:.0f} s per level, loopback\n")
    print(table(rows, ["endpoint", "clients", "req/s", "p50 ms", "p99 ms", "errors"]))
    p99 = out.get("POST-50", {}).get("p99_ms")
    if p99 is not None:
        print(f"\ntarget p99 submit <= 20 ms at 50 clients: {p99:.1f} ms "
              f"({'met' if p99 <= 20 else 'not met'})")
    save("api", out)


if __name__ == "__main__":
    main()
