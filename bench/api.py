"""API latency under load, workers stopped: only the API and Redis are measured.

    python -m bench.api [--seconds 20] [--clients 10,50,200] [--api-workers 2]

Four parts, loopback only, each bounded by ``--seconds``:

1. service time: one client, one request at a time (what a request costs the API);
2. closed loop: N clients each send the next request as soon as the last one
   answers (POST /v1/jobs, then GET /v1/jobs/<id>), N = 10, 50, 200. Latency here is
   N / throughput (Little's law): it measures capacity, not a user's wait;
3. paced: 50 clients each sending ``--rate`` requests/s (2 by default: 100 req/s in
   all, about a third of the closed-loop submit capacity here) at steady times (open
   loop, latency counted from the planned send time): what 50 users see when the API
   is not saturated;
4. ratios last: the 50-client p99 against the 20 ms target.

No worker consumes the queue. Clients are plain ``http.client`` keep-alive
connections in threads; the load generator shares the machine's cores with the API.
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import percentile, save, table
from harness.stack import Stack


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, host: str, port: int) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=10)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data else {}
        try:
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            return 0, b""


def one_request(c: Client, method: str, n: int, tag: str, job_ids: list[str]) -> bool:
    if method == "POST":
        status, body = c.request(
            "POST", "/v1/jobs", {"prompt": f"load {tag} {n}", "model": "tiny-sd", "seed": n}
        )
        if status == 202 and len(job_ids) < 2000:
            job_ids.append(json.loads(body)["id"])
        return status == 202
    status, _ = c.request("GET", f"/v1/jobs/{job_ids[n % len(job_ids)]}")
    return status == 200


def run(
    host: str,
    port: int,
    clients: int,
    seconds: float,
    *,
    method: str,
    job_ids: list[str],
    rate: float | None = None,
) -> dict[str, Any]:
    """``clients`` threads for ``seconds``; closed loop, or each at ``rate`` req/s."""
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = time.perf_counter() + 0.2  # every thread connected first
    stop = start + seconds

    def client(i: int) -> None:
        c, n, mine, bad = Client(host, port), 0, [], 0
        c.request("GET", "/healthz")
        if rate:  # spread the clients' first sends over one period
            planned = start + (i / clients) / rate
        while True:
            if rate:
                time.sleep(max(0.0, planned - time.perf_counter()))
                t0 = planned
                planned += 1 / rate
            else:
                time.sleep(max(0.0, start - time.perf_counter()))
                t0 = time.perf_counter()
            if t0 >= stop:
                break
            ok = one_request(c, method, n, f"{clients}-{i}", job_ids)
            mine.append(time.perf_counter() - t0)
            bad += not ok
            n += 1
        with lock:
            lat.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "clients": clients,
        "requests": len(lat),
        "rps": len(lat) / seconds,
        "errors": errors[0],
        "p50_ms": 1000 * percentile(lat, 0.5),
        "p99_ms": 1000 * percentile(lat, 0.99),
    }


NAMES = {"POST": "submit (POST /v1/jobs)", "GET": "GET /v1/jobs/<id>"}


def main() -> None:
    ap = argparse.ArgumentParser(description="API latency under load")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", default="10,50,200")
    ap.add_argument("--api-workers", type=int, default=2)
    ap.add_argument("--rate", type=float, default=2.0, help="paced requests/s per client")
    args = ap.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    stack = Stack(
        Path(tempfile.mkdtemp(prefix="kiln-bench-api-")),
        env_overrides={"KILN_LOG_LEVEL": "WARNING"},
    )
    out: dict[str, Any] = {"api_workers": args.api_workers, "seconds": args.seconds}
    rows: list[list[Any]] = []
    try:
        stack.start_servers()
        url = stack.start_api(threads=64, workers=args.api_workers)
        host, port = url.removeprefix("http://").split(":")
        job_ids: list[str] = []

        def measure(
            key: str,
            method: str,
            clients: int,
            seconds: float,
            label: str,
            rate: float | None = None,
        ) -> dict[str, Any]:
            res = run(host, int(port), clients, seconds, method=method, job_ids=job_ids, rate=rate)
            out[key] = res
            rows.append(
                [NAMES[method], label, res["rps"], res["p50_ms"], res["p99_ms"], res["errors"]]
            )
            print("  ".join(str(c) for c in rows[-1]), flush=True)
            return res

        for method in ("POST", "GET"):
            measure(f"{method}-1", method, 1, min(args.seconds, 5), "1 (service time)")
        for clients in levels:
            for method in ("POST", "GET"):
                measure(
                    f"{method}-{clients}", method, clients, args.seconds, f"{clients} closed loop"
                )
        for method in ("POST", "GET"):
            measure(
                f"{method}-50-paced",
                method,
                50,
                args.seconds,
                f"50 paced, {50 * args.rate:.0f} req/s offered",
                rate=args.rate,
            )
    finally:
        stack.close()
    print(
        f"\nAPI only (gunicorn {args.api_workers} workers x 64 threads), no worker, "
        f"{args.seconds:.0f} s per level, loopback, 2-core CPU shared with the clients\n"
    )
    print(table(rows, ["endpoint", "clients", "req/s", "p50 ms", "p99 ms", "errors"]))
    closed, paced = out.get("POST-50"), out["POST-50-paced"]
    errors = sum(r["errors"] for r in out.values() if isinstance(r, dict))
    print("\nratios")
    ratio_rows = [
        ["submit service time, 1 client (ms)", out["POST-1"]["p50_ms"]],
        ["paced p99 submit at 50 clients / 20 ms target", paced["p99_ms"] / 20],
    ]
    if closed:
        ratio_rows += [
            ["closed-loop p99 submit at 50 clients / 20 ms target", closed["p99_ms"] / 20],
            ["50 / closed-loop submit throughput (Little's law, ms)", 1000 * 50 / closed["rps"]],
        ]
    ratio_rows.append(["errors, all levels", errors])
    print(table(ratio_rows, ["ratio", "value"]))
    save("api", out)


if __name__ == "__main__":
    main()
