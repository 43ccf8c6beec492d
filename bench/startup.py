"""Cold starts: the API (which never imports torch) and a worker per tiny family.

    python -m bench.startup

API: spawn → first 200 from /healthz, and `create_app()` alone in a fresh interpreter.
Workers: spawn `kiln worker --model M` → its heartbeat (model loaded and warmed), and
the import of torch + diffusers alone in a fresh interpreter, the floor of any worker
start. Ratios last: worker start against the API's, and the imports' share of it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import save, table, tiny_models
from harness.stack import Stack


def main() -> None:
    models_dir = tiny_models()
    code = (
        "import time, sys; t=time.perf_counter(); from app import create_app; "
        "from config.settings import from_env; "
        "create_app({'KILN_SETTINGS': from_env({'KILN_S3_CREATE_BUCKET': 'false'})}); "
        "print(time.perf_counter()-t, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    rows: list[list[Any]] = [
        ["create_app() in a fresh interpreter", float(out[0]), f"torch imported: {out[1]}"]
    ]
    imports = float(
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import time; t=time.perf_counter(); import torch, diffusers; "
                "from diffusers import StableDiffusionPipeline; print(time.perf_counter()-t)",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[-1]
    )
    rows.append(["import torch + diffusers (fresh interpreter)", imports, "floor of a worker"])
    stack = Stack(Path(tempfile.mkdtemp(prefix="kiln-bench-start-")), models_dir=models_dir)
    try:
        stack.start_servers()
        t0 = time.perf_counter()
        stack.start_api()
        rows.append(["API: spawn → /healthz 200", time.perf_counter() - t0, "gunicorn"])
        for model in ("tiny-sd", "sd15", "sdxl", "flux-schnell"):
            t0 = time.perf_counter()
            proc = stack.start_worker(model)
            rows.append(
                [
                    f"worker {model}: spawn → ready",
                    time.perf_counter() - t0,
                    "load + warm-up + Celery",
                ]
            )
            proc.stop()
    finally:
        stack.close()
    print("\ncold starts, 2-core CPU\n")
    print(table(rows, ["what", "seconds", "note"]))
    secs: dict[str, float] = {r[0]: r[1] for r in rows}
    api, worker = secs["API: spawn → /healthz 200"], secs["worker tiny-sd: spawn → ready"]
    print("\nratios")
    print(
        table(
            [
                ["worker tiny-sd start / API start", worker / api],
                ["torch + diffusers import / worker tiny-sd start", imports / worker],
            ],
            ["ratio", "value"],
        )
    )
    save("startup", secs)


if __name__ == "__main__":
    main()
