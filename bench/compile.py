"""Regional against whole-model ``torch.compile``: compile time and speed, in one run.

    python -m bench.compile [--backend inductor] [--sizes 64,32] [--steps 8]

tiny-sd (or ``--model``) with ``compile: true`` is warmed up, as a worker does, in a
fresh process with an empty inductor cache for each variant: ``compile_regional: true``
(the denoiser's repeated blocks) and ``false`` (the whole denoiser and ``vae.decode``).
Each warm-up compiles every size of ``--sizes`` (the first is the default size, the
rest ``compile_sizes``); then each size's call is timed compiled and, in the same
process, eager. Prints warm-up seconds, compiled and eager seconds per image, their
ratios, and the largest pixel difference from eager.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import save, table, tiny_models


def child(
    model_name: str, regional: bool, sizes: list[int], steps: int, backend: str, models: str
) -> None:
    """One variant, in this process; prints one JSON line."""
    from dataclasses import replace

    import numpy as np
    import torch

    from harness.pipelines import REGISTRY
    from pipelines.batch import Item, Params, run_batch
    from pipelines.loader import load_model, warm_up
    from pipelines.registry import resolve

    torch.set_num_threads(1)
    spec = REGISTRY[model_name].spec
    spec = replace(
        spec,
        loras=(),
        dtype="fp32",
        max_batch=1,
        compile=True,
        compile_backend=backend,
        compile_regional=regional,
        defaults=replace(spec.defaults, width=sizes[0], height=sizes[0]),
        compile_sizes=tuple((s, s) for s in sizes[1:]),
    )
    loaded = load_model(resolve(spec), models_dir=Path(models), device="cpu")
    warm_s = warm_up(loaded)
    out: dict[str, Any] = {"variant": loaded.compiled.what, "warm_up_s": warm_s, "sizes": {}}
    for size in sizes:
        params = Params(
            width=size,
            height=size,
            steps=steps,
            guidance_scale=loaded.model.guidance_scale,
            scheduler=loaded.model.scheduler,
        )
        items = [Item("a kiln at dusk", None, 7)]

        def call(params: Params = params, items: list[Item] = items) -> tuple[float, Any]:
            t0 = time.perf_counter()
            (image,) = run_batch(loaded, params, items)
            return time.perf_counter() - t0, np.asarray(image, dtype=np.int16)

        fast_s, fast = min((call() for _ in range(3)), key=lambda r: r[0])
        with torch.compiler.set_stance("force_eager"):
            eager_s, eager = min((call() for _ in range(3)), key=lambda r: r[0])
        out["sizes"][size] = {
            "compiled_s": fast_s,
            "eager_s": eager_s,
            "max_diff": int(np.abs(fast - eager).max()),
        }
    out["eager_calls"] = loaded.compiled.eager_calls
    print(json.dumps(out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-sd")
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--sizes", default="64,32")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    models = tiny_models()
    results = []
    for regional in (True, False):
        with tempfile.TemporaryDirectory(prefix="kiln-inductor-") as cache:
            call = (args.model, regional, sizes, args.steps, args.backend, str(models))
            code = f"from bench.compile import child; child(*{call!r})"
            env = {"TORCHINDUCTOR_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
            run = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                timeout=1800,
                env={**os.environ, **env},
                check=True,
            )
            results.append(json.loads(run.stdout.strip().splitlines()[-1]))
    rows = []
    for r in results:
        for size, s in r["sizes"].items():
            rows.append(
                [
                    r["variant"],
                    f"{size}²",
                    f"{r['warm_up_s']:.1f}",
                    f"{s['compiled_s'] * 1000:.1f}",
                    f"{s['eager_s'] * 1000:.1f}",
                    f"{s['eager_s'] / s['compiled_s']:.2f}",
                    s["max_diff"],
                ]
            )
    header = [
        "compiled",
        "size",
        "warm-up s",
        "compiled ms",
        "eager ms",
        "eager/compiled",
        "max diff",
    ]
    print(table(rows, header))
    regional, whole = results
    print(
        f"\nwarm-up (compile of {len(sizes)} sizes): regional {regional['warm_up_s']:.1f} s, "
        f"whole {whole['warm_up_s']:.1f} s: {whole['warm_up_s'] / regional['warm_up_s']:.1f}× "
        "less with regional compilation"
    )
    save("compile", {"args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
