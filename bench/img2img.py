"""img2img through the whole stack: batched (max_batch 8) against one at a time.

    python -m bench.img2img [--images 16] [--steps 8] [--strength 0.75] [--rounds 3]
                            [--torch-threads N]

Two stacks side by side, each with one tiny-sd worker (max_batch 1 and 8), get the
same burst of img2img jobs: one init image (given once as a data URL, stored by the
API under ``inputs/``), a prompt and a seed per job. The two take turns for
``--rounds`` rounds and the best round of each is kept. Prints images/s, pipeline
calls and the batched/one-at-a-time ratio.
"""

from __future__ import annotations

import argparse
import base64
import io
from contextlib import ExitStack
from typing import Any

import numpy as np
from PIL import Image

from bench.common import burst, save, stack_with_worker, table, tiny_models, torch_threads

MODEL = "tiny-sd"


def init_image(size: int) -> str:
    x = np.linspace(0, 255, size, dtype=np.uint8)
    rgb = np.stack(
        [np.tile(x, (size, 1)), np.tile(x[:, None], (1, size)), np.full((size, size), 90)], -1
    )
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def main() -> None:
    ap = argparse.ArgumentParser(description="img2img: batched vs one at a time")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--strength", type=float, default=0.75)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--torch-threads", type=int, default=0, help="workers' (0: torch's)")
    args = ap.parse_args()

    image = init_image(args.size)
    jobs = [
        dict(
            prompt=f"a red fox, take {i}",
            model=MODEL,
            image=image,
            strength=args.strength,
            steps=args.steps,
            seed=i,
        )
        for i in range(args.images)
    ]
    best: dict[int, dict[str, Any]] = {}
    with ExitStack() as es:
        stacks = {
            b: es.enter_context(
                stack_with_worker(
                    MODEL,
                    models_dir=tiny_models(None),
                    env=torch_threads(args.torch_threads),
                    max_batch=b,
                    max_wait_ms=100,
                )
            )
            for b in (1, 8)
        }
        for stack, api in stacks.values():
            burst(stack, api, jobs[:4])  # warm the API, the worker and the img2img pipeline
        for r in range(args.rounds):
            for b, (stack, api) in stacks.items():
                res = burst(stack, api, jobs)
                print(
                    f"round {r + 1}: max_batch {b}: {res['images_per_s']:.2f} images/s", flush=True
                )
                if res["images_per_s"] > best.get(b, {}).get("images_per_s", 0):
                    best[b] = {k: v for k, v in res.items() if k != "records"}

    print(
        f"\ntiny-sd img2img, {args.size}x{args.size}, {args.steps} steps at strength "
        f"{args.strength}, {args.images} jobs at once, best of {args.rounds} rounds\n"
    )
    rows = [
        [f"max_batch {b}", f"{r['images_per_s']:.3f}", r["calls"], f"{r['p50_s']:.2f}"]
        for b, r in best.items()
    ]
    print(table(rows, ["worker", "images/s", "pipeline calls", "p50 done (s)"]))
    ratio = best[8]["images_per_s"] / best[1]["images_per_s"]
    print(f"\nbatched / one at a time: {ratio:.3f}")
    save(
        "img2img",
        {"args": vars(args), "best": {str(b): r for b, r in best.items()}, "ratio": ratio},
    )


if __name__ == "__main__":
    main()
