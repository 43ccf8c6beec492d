"""A single-file checkpoint of each family, added with `kiln models add`, serves a job
through the real stack with the pixels of the same weights loaded from their folder; a
running API lists an added model within seconds and forgets a removed one, no restart."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

from harness.http import KilnHTTP, fetch_image
from harness.stack import Stack, stop_all, wait_for

# family → (model name, tiny recipe: its checkpoint and config folder)
ADDED = {
    "sd15": ("file-sd15", "sd15"),
    "sdxl": ("file-sdxl", "sdxl"),
    "flux": ("file-flux", "flux"),
}


@dataclass
class Added:
    api: KilnHTTP
    env: dict[str, str]
    models_dir: Path


def add(stack: Stack, env: dict[str, str], models_dir: Path, name: str, recipe: str) -> str:
    res = stack.run_kiln(
        "models",
        "add",
        name,
        str(models_dir / "checkpoints" / f"{recipe}.safetensors"),
        "--config",
        str(models_dir / recipe),
        "--dtype",
        "fp32",
        env=env,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.fixture(scope="module")
def added(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Added]:
    """The three checkpoints added to a drop-in folder of their own; a worker each and an
    API reading that folder, on the session's Valkey and S3."""
    assert stack.models_dir is not None
    models_dir = stack.models_dir
    env = {"KILN_MODELS_DROPIN_DIR": str(tmp_path_factory.mktemp("models.d"))}
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda a: add(stack, env, models_dir, *a), ADDED.values()))
    before = len(stack.procs)
    try:
        workers = [
            (name, stack.start_worker(name, env=env, wait=False)) for name, _ in ADDED.values()
        ]
        for name, proc in workers:
            stack.wait_worker_ready(name, proc, timeout=180)
        yield Added(KilnHTTP(stack.start_api(env=env)), env, models_dir)
    finally:
        stop_all(stack.procs[before:])


def folder_pixels(models_dir: Path, recipe: str, family: str, params: dict) -> np.ndarray:
    """The job's image made here by the engine's own call, the weights from the folder."""
    from config.models import ModelSpec
    from pipelines.batch import Item, Params, run_batch
    from pipelines.loader import load_model
    from pipelines.registry import resolve

    spec = ModelSpec(name="folder", family=family, source=str(models_dir / recipe), dtype="fp32")
    loaded = load_model(resolve(spec), models_dir=models_dir, device="cpu")
    call = Params(
        width=params["width"],
        height=params["height"],
        steps=params["steps"],
        guidance_scale=params["guidance_scale"],
        scheduler=params["scheduler"],
    )
    (image,) = run_batch(loaded, call, [Item(params["prompt"], None, params["seed"])])
    return np.asarray(image)


@pytest.mark.parametrize("kind", list(ADDED))
def test_an_added_checkpoint_serves_the_pixels_of_its_folder(added: Added, kind: str) -> None:
    name, recipe = ADDED[kind]
    done = added.api.run(prompt="a red fox", model=name, width=64, height=64, steps=2, seed=11)
    assert done["status"] == "succeeded", done
    served = np.asarray(fetch_image(done["images"][0]["url"]).convert("RGB"))
    family = "flux-schnell" if kind == "flux" else kind
    params = {**done["params"], "seed": done["seeds"][0]}
    assert np.array_equal(served, folder_pixels(added.models_dir, recipe, family, params))


def test_a_running_api_lists_an_added_model_and_forgets_a_removed_one(
    stack: Stack, added: Added
) -> None:
    def listed() -> set[str]:
        return {m["id"] for m in added.api.get("/v1/models").json()["data"]}

    assert "file-extra" not in listed()
    out = add(stack, added.env, added.models_dir, "file-extra", "sd15")
    assert "kiln worker --model file-extra" in out
    wait_for(lambda: "file-extra" in listed(), timeout=10, what="file-extra listed")
    # Job validation knows it too: a bad size is refused naming the size, not the model.
    bad = added.api.post("/v1/jobs", json={"prompt": "x", "model": "file-extra", "width": 65})
    assert bad.status_code == 422 and "width" in bad.json()["error"]["fields"], bad.text
    res = stack.run_kiln("models", "remove", "file-extra", env=added.env)
    assert res.returncode == 0, res.stderr
    wait_for(lambda: "file-extra" not in listed(), timeout=10, what="file-extra gone")
    gone = requests.get(f"{added.api.base_url}/v1/models/file-extra", timeout=5)
    assert gone.status_code == 404
