"""What the benchmarks share: a stack with one model's worker, bursts of jobs, tables."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis
import yaml

from config.settings import DEFAULT_MODELS_FILE
from harness.http import KilnHTTP
from harness.stack import Stack
from tasks.jobs import bookkeeping as bk


def make_models_file(directory: Path, **overrides: Any) -> Path:
    """A copy of the shipped models.yaml with fields overridden on every model."""
    doc = yaml.safe_load(DEFAULT_MODELS_FILE.read_text())
    for m in doc["models"]:
        m.update(overrides)
    out = directory / f"models-{abs(hash(tuple(sorted(overrides.items()))))}.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


@contextmanager
def stack_with_worker(
    model: str,
    *,
    models_dir: Path,
    workdir: Path | None = None,
    models_file: Path | None = None,
    env: dict[str, str] | None = None,
    **model_overrides: Any,
) -> Iterator[tuple[Stack, KilnHTTP]]:
    """A stack with one worker of ``model``; the shipped models with overrides by default.

    ``env`` adds ``KILN_*`` settings for every process of the stack."""
    tmp = Path(workdir or tempfile.mkdtemp(prefix="kiln-bench-"))
    mf = models_file or make_models_file(tmp, **model_overrides)
    stack = Stack(
        tmp / f"stack-{time.monotonic_ns()}",
        models_dir=models_dir,
        env_overrides={"KILN_MODELS_FILE": str(mf), "KILN_LOG_LEVEL": "WARNING", **(env or {})},
    )
    try:
        stack.start_servers()
        stack.start_worker(model, timeout=300)
        stack.start_api()
        yield stack, KilnHTTP(stack.api_url)
    finally:
        stack.close()


def burst(
    stack: Stack, api: KilnHTTP, jobs: Sequence[dict[str, Any]], *, timeout: float = 600
) -> dict:
    """Submit all jobs at once, wait for all; wall time, per-job completion times.

    Completion is watched in the job store with one pipelined read every 20 ms, so the
    watching costs the 2-core machine next to nothing (polling 32 jobs over HTTP would
    steal CPU from the worker being measured).
    """
    store = redis.Redis.from_url(stack.env["KILN_REDIS_URL"], decode_responses=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        submitted = list(pool.map(lambda j: api.submit(**j), jobs))
    done = watch(
        store,
        [j["id"] for j in submitted],
        t0=t0,
        timeout=timeout,
        read=lambda pipe, job_id: pipe.hget(bk.job_key(job_id), "status"),
        finished=lambda status: json.loads(status) in {"succeeded", "failed", "canceled"},
    )
    records = {j: api.get(f"/v1/jobs/{j}").json() for j in done}
    failed = [r for r in records.values() if r["status"] != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs failed: {failed[0].get('error')}")
    wall = max(done.values())
    images = sum(len(r["images"]) for r in records.values())
    lat = sorted(done.values())
    return {
        "wall_s": wall,
        "images": images,
        "images_per_s": images / wall,
        "p50_s": statistics.median(lat),
        "p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))],
        "calls": len({b["id"] for r in records.values() for b in r.get("batches") or []}),
        "records": records,
    }


def watch(
    store: redis.Redis,
    ids: Sequence[str],
    *,
    read: Callable[[Any, str], Any],
    finished: Callable[[str], bool],
    t0: float,
    timeout: float,
) -> dict[str, float]:
    """Seconds from ``t0`` until each id is ``finished``: one pipelined read of every
    pending id (``read(pipe, id)``) every 20 ms, cheap next to the work being timed."""
    done: dict[str, float] = {}
    pending = list(ids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        with store.pipeline(transaction=False) as pipe:
            for item in pending:
                read(pipe, item)
            values = pipe.execute()
        now = time.perf_counter() - t0
        for item, value in zip(list(pending), values, strict=True):
            if value is not None and finished(value):
                done[item] = now
                pending.remove(item)
        time.sleep(0.02)
    if pending:
        raise TimeoutError(f"{len(pending)} jobs unfinished")
    return done


def cpu_dtypes(arg: str = "") -> list[str]:
    """The CPU precisions to compare (``KILN_CPU_DTYPE`` values, comma-separated in
    ``arg``); by default fp32, and bf16 where this CPU has it in hardware."""
    if arg:
        return arg.split(",")
    from pipelines.devices import native_bf16

    return ["fp32", "bf16"] if native_bf16() else ["fp32"]


def torch_threads(threads: int) -> dict[str, str]:
    """Use ``threads`` torch threads in this process (0: torch's default) and return the
    ``KILN_TORCH_THREADS`` setting that gives the stack's workers the same."""
    if not threads:
        return {}
    from pipelines.loader import set_torch_threads

    set_torch_threads(threads)
    return {"KILN_TORCH_THREADS": str(threads)}


def tiny_models(models_dir: Path | None = None) -> Path:
    """The tiny stand-ins, built in ``models_dir`` (a fresh temporary folder by default)."""
    from pipelines.tiny import make_all

    path = models_dir or Path(tempfile.mkdtemp(prefix="kiln-models-"))
    make_all(path)
    return path


RESULTS = Path(__file__).resolve().parent.parent / "docs" / "bench"


def save(name: str, data: Any) -> Path:
    """Keep a bench's numbers (docs/bench/<name>.json) for the plots and the docs."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


__all__ = ["burst", "make_models_file", "replace", "stack_with_worker", "table"]
