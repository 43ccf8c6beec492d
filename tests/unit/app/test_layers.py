"""The API process loads no torch and no worker code (import-linter holds the rest)."""

from __future__ import annotations

import json
import subprocess
import sys

from harness.stack import ROOT

PROBE = """
import json, sys
from app import create_app
from config.settings import from_env

settings = from_env({"KILN_PROFILE": "test", "KILN_AUTH": "off", "KILN_S3_CREATE_BUCKET": "0"})
client = create_app({"KILN_SETTINGS": settings, "TESTING": True}).test_client()
codes = [client.get(p).status_code for p in ("/healthz", "/v1/models", "/openapi.json", "/")]
print(json.dumps({"codes": codes, "modules": sorted(sys.modules)}))
"""


def test_the_api_loads_no_torch_and_no_worker_module() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["codes"] == [200, 200, 200, 200]
    loaded = set(seen["modules"])
    assert "tasks.jobs.service" in loaded  # the probe did build the API
    heavy = {"torch", "diffusers", "transformers", "accelerate", "pipelines.engine"}
    assert not loaded & heavy
    assert not [m for m in loaded if m == "tasks.worker" or m.startswith("tasks.worker.")]
