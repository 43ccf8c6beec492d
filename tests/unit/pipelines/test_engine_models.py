"""An engine serving several models: one model per call, resident models first, a model
that cannot load fails its own requests only."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from config.errors import ModelUnavailable
from harness.pipelines import REGISTRY
from pipelines.engine import Engine, Request
from pipelines.registry import resolve
from pipelines.resident import Budget, Resident
from tests.unit.pipelines.test_engine import PARAMS, FakePipe, fake_loaded


def several(tmp_path: Path, names: list[str], *, fail: str = "", **budget: Any):
    models = {
        n: resolve(replace(REGISTRY["tiny-sd"].spec, name=n, max_batch=4, max_wait_ms=50))
        for n in names
    }
    pipes = {n: FakePipe() for n in names}
    loads: list[str] = []

    def load(model: Any) -> Any:
        loads.append(model.name)
        if model.name == fail:
            raise OSError(f"{model.name}.safetensors: not a checkpoint")
        return fake_loaded(model, pipes[model.name])

    res = Resident(models, load=load, budget=Budget(**budget), device="cpu", models_dir=tmp_path)
    eng = Engine(models[names[0]], models_dir=tmp_path, resident=res, initial=(names[0],))
    eng.start()
    eng.wait_ready(10)
    return eng, pipes, loads


def req(i: int, model: str) -> Request:
    return Request(id=f"r{i}", model=model, prompt=f"{model} {i}", seeds=[i], params=PARAMS)


def test_one_call_holds_one_models_requests(tmp_path: Path) -> None:
    eng, pipes, _ = several(tmp_path, ["a", "b"], max_resident=2)
    futures = [eng.submit(req(i, "ab"[i % 2])) for i in range(8)]
    for f in futures:
        f.result(10)
    eng.stop()
    for name, pipe in pipes.items():
        assert pipe.calls and all(p.startswith(name) for call in pipe.calls for p in call)


def test_a_model_loaded_for_a_request_says_how_long_it_waited(tmp_path: Path) -> None:
    eng, _, loads = several(tmp_path, ["a", "b"], max_resident=1)
    resident_one, loaded_one = req(1, "a"), req(2, "b")
    eng.submit(resident_one).result(10)
    eng.submit(loaded_one).result(10)
    eng.stop()
    assert loads == ["a", "b"]
    assert resident_one.load_wait_s == 0.0 and loaded_one.load_wait_s >= 0.0
    assert list(eng.resident.resident) == ["b"]  # type: ignore[union-attr]


def test_a_model_that_cannot_load_fails_its_own_requests_only(tmp_path: Path) -> None:
    eng, _, loads = several(tmp_path, ["a", "bad"], fail="bad", max_resident=1)
    bad = [eng.submit(req(i, "bad")) for i in range(2)]
    for f in bad:
        with pytest.raises(ModelUnavailable, match="model bad cannot load: OSError"):
            f.result(10)
    again = eng.submit(req(5, "bad"))
    with pytest.raises(ModelUnavailable):
        again.result(10)
    assert eng.submit(req(3, "a")).result(10).images
    eng.stop()
    assert loads.count("bad") == 1  # remembered, not tried for every request


def test_resident_batches_go_first_unless_another_model_waited_max_swap_wait_s(
    tmp_path: Path,
) -> None:
    eng, _, _ = several(tmp_path, ["a", "b"], max_resident=1)
    order = eng._first  # the engine's own choice, on the ready batches it sees
    ka, kb = ("a", PARAMS), ("b", PARAMS)
    assert order([(5.0, kb), (6.0, ka)], now=7.0) == ka  # b is older, a is resident
    assert order([(5.0, kb), (6.0, ka)], now=5.0 + eng.max_swap_wait_s) == kb
    eng.stop()
