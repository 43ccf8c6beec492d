"""``compile: true`` on a real worker, with inductor on the CPU: tiny-sd compiled at its
default size and at one ``compile_sizes`` entry serves both sizes, with its LoRA on and
off, from the graphs warm-up made (no recompile while serving); a size it did not
compile runs eager and is counted; every image is within one level of the same job on
the eager tiny-sd worker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from config.settings import DEFAULT_MODELS_FILE
from harness.http import KilnHTTP, fetch_image
from harness.metrics import scrape, value
from harness.stack import Stack, free_port, stop_all

# inductor's caches, kept between runs as a worker's are across restarts (a fresh
# machine compiles once, here about 20 s a size on one core).
CACHE = Path.home() / ".cache" / "kiln-tests" / "inductor"


@pytest.fixture(scope="module")
def compiled(stack: Stack, tmp_path_factory: pytest.TempPathFactory):
    (entry,) = [
        m
        for m in yaml.safe_load(DEFAULT_MODELS_FILE.read_text())["models"]
        if m["name"] == "tiny-sd"
    ]
    models = tmp_path_factory.mktemp("compile") / "models.yaml"
    twin = {
        **entry,
        "name": "tiny-sd-compiled",
        "compile": True,
        "compile_sizes": [[32, 32]],
        "max_batch": 1,  # one bucket: the fewest graphs to compile
    }
    models.write_text(yaml.safe_dump({"models": [entry, twin]}))
    env = {"KILN_MODELS_FILE": str(models), "TORCHINDUCTOR_CACHE_DIR": str(CACHE)}
    port = free_port()
    before = len(stack.procs)
    try:
        stack.start_worker(
            "tiny-sd-compiled", args=("--metrics-port", str(port)), env=env, timeout=600
        )
        yield KilnHTTP(stack.start_api(env=env)), f"http://127.0.0.1:{port}/metrics"
    finally:
        stop_all(stack.procs[before:])


def pixels(api: KilnHTTP, **job: object) -> np.ndarray:
    done = api.run(prompt="a kiln at dusk", steps=2, seed=11, **job)
    assert done["status"] == "succeeded", done
    return np.asarray(fetch_image(done["images"][0]["url"]), dtype=np.int16)


def test_a_compiled_model_serves_its_sizes_and_loras_from_warm_up_graphs(compiled) -> None:
    api, metrics_url = compiled
    at_start = scrape(metrics_url)
    graphs = value(at_start, "kiln_compiled_graphs", model="tiny-sd-compiled")
    assert graphs > 0  # warm-up compiled before the worker said it was ready

    cases = [(64, []), (64, [{"name": "style"}]), (32, []), (32, [{"name": "style"}])]
    for size, loras in cases:
        job = dict(width=size, height=size, loras=loras)
        fast, slow = (
            pixels(api, model="tiny-sd-compiled", **job),
            pixels(api, model="tiny-sd", **job),
        )
        assert np.abs(fast - slow).max() <= 1, f"{size}² loras {loras}: compiled != eager"

    served = scrape(metrics_url)
    assert value(served, "kiln_recompiles_total", model="tiny-sd-compiled") == 0
    assert value(served, "kiln_compile_eager_calls_total", model="tiny-sd-compiled") == 0
    print(f"compiled graphs {graphs:.0f}; 4 jobs served with 0 recompiles")


def test_a_size_it_did_not_compile_runs_eager_and_is_counted(compiled) -> None:
    api, metrics_url = compiled
    before = scrape(metrics_url)
    fast = pixels(api, model="tiny-sd-compiled", width=48, height=48)
    slow = pixels(api, model="tiny-sd", width=48, height=48)
    assert np.abs(fast - slow).max() <= 1
    after = scrape(metrics_url)
    name = "kiln_compile_eager_calls_total"
    assert (
        value(after, name, model="tiny-sd-compiled")
        == value(before, name, model="tiny-sd-compiled") + 1
    )
    assert value(after, "kiln_recompiles_total", model="tiny-sd-compiled") == 0
