"""The classic single-job design, as a baseline: one Celery worker process that takes
one job at a time from one queue and runs it alone (no batching). Same pipeline, same
model, same PNG upload to S3 — only the design differs.

    celery -A bench.classic worker --pool=solo --queues=classic --prefetch-multiplier=1
"""

from __future__ import annotations

import io
from typing import Any

from celery import Celery

from config.settings import get_settings

settings = get_settings()
app = Celery("classic", broker=settings.broker_url, backend=settings.redis_url)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    worker_prefetch_multiplier=1,
)
_pipe: dict[str, Any] = {}


def pipeline() -> Any:
    if "loaded" not in _pipe:
        from pipelines.loader import load_model, set_torch_threads, warm_up
        from pipelines.registry import Registry

        set_torch_threads(settings.torch_threads)  # KILN_TORCH_THREADS, as Kiln's workers
        model = Registry.from_file(settings.models_file)["tiny-sd"]
        _pipe["loaded"] = load_model(
            model, models_dir=settings.models_dir, cpu_dtype=settings.cpu_dtype
        )
        warm_up(_pipe["loaded"])
    return _pipe["loaded"]


@app.task(name="classic.generate")
def generate(prompt: str, seed: int, width: int, height: int, steps: int) -> str:
    import torch

    from tasks.jobs.storage import Storage

    loaded = pipeline()
    image = loaded.pipe(
        prompt=prompt,
        width=width,
        height=height,
        num_inference_steps=steps,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    key = f"classic/{generate.request.id}.png"
    Storage(settings).put(key, buf.getvalue())
    return key
