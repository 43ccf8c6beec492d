"""Per-model time limits on a threads-pool worker (Celery enforces them only in prefork)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import requests

from harness.http import KilnHTTP
from harness.stack import Stack, one_model_file


def test_a_job_past_its_soft_limit_stops_and_fails_and_the_worker_goes_on(
    tmp_path: Path, tiny_models_dir: Path
) -> None:
    model = f"limit-{uuid.uuid4().hex[:8]}"
    models_file = one_model_file(
        tmp_path,
        model,
        max_batch=4,
        max_wait_ms=50,
        defaults={"width": 64, "height": 64, "steps": 2},
        limits={"max_size": 512, "max_steps": 1000},
        soft_time_limit_s=3,
        time_limit_s=120,
    )
    stack = Stack(
        tmp_path, models_dir=tiny_models_dir, env_overrides={"KILN_MODELS_FILE": str(models_file)}
    )
    try:
        stack.start_servers()
        api = KilnHTTP(stack.start_api())
        stack.start_worker(model)
        slow = api.run(prompt="too slow", model=model, width=128, height=128, steps=1000, seed=1)
        assert slow["status"] == "failed", slow
        assert slow["error"]["code"] == "time_limit_exceeded"
        text = requests.get(f"{api.base_url}/v1/jobs/{slow['id']}/events", timeout=30).text
        failed = json.loads(text.rsplit("data: ", 1)[1])
        assert failed["steps_done"] < 1000  # stopped mid-run, not left running
        assert stack.objects(f"generated/{slow['id']}/") == []
        quick = api.run(prompt="quick", model=model, width=64, height=64, steps=2, seed=2)
        assert quick["status"] == "succeeded", quick  # the engine was freed, not wedged
    finally:
        stack.close()
