"""Which models an engine holds on its device: budget, LRU eviction, failures remembered."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from config.errors import ModelUnavailable, OutOfMemory
from harness.pipelines import REGISTRY
from pipelines.registry import Model, resolve
from pipelines.resident import Budget, Loaded, Resident, device_bytes

MiB = 1 << 20


class Weights(torch.nn.Module):
    def __init__(self, mib: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(mib * MiB // 4))  # fp32: 4 bytes each


def models(*names: str) -> dict[str, Model]:
    return {n: resolve(replace(REGISTRY["tiny-sd"].spec, name=n)) for n in names}


class Loads:
    """A load function of weights of a given size per model; it can fail or run out of
    memory (counted, so that a test sees what was tried)."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.calls: list[str] = []
        self.fail: set[str] = set()
        self.oom: dict[str, int] = {}  # model -> out-of-memory errors still to raise

    def __call__(self, model: Model) -> Any:
        self.calls.append(model.name)
        if model.name in self.fail:
            raise ValueError("header too large: not a safetensors file")
        if self.oom.get(model.name):
            self.oom[model.name] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory (in a test)")
        pipe = SimpleNamespace(components={"unet": Weights(self.sizes[model.name])})
        return SimpleNamespace(pipe=pipe)


def resident(sizes: dict[str, int], tmp_path: Path, **budget: Any) -> tuple[Resident, Loads]:
    loads = Loads(sizes)
    events: list[Any] = []
    res = Resident(
        models(*sizes),
        load=loads,
        budget=Budget(**budget),
        device="cpu",
        models_dir=tmp_path,
        on_load=events.append,
        on_evict=lambda name: events.append(("evict", name)),
    )
    res.events = events  # type: ignore[attr-defined]
    return res, loads


def test_device_bytes_counts_every_parameter_once() -> None:
    shared = Weights(1)
    pipe = SimpleNamespace(components={"a": shared, "b": shared, "tokenizer": object()})
    assert device_bytes(pipe) == MiB


def test_a_count_budget_evicts_the_least_recently_used(tmp_path: Path) -> None:
    res, loads = resident({"a": 1, "b": 1, "c": 1}, tmp_path, max_resident=2)
    for name in ["a", "b", "a", "c"]:
        res.get(name)
    assert list(res.resident) == ["a", "c"]  # b was the least recently used
    assert loads.calls == ["a", "b", "c"]
    assert ("evict", "b") in res.events  # type: ignore[attr-defined]


def test_a_byte_budget_is_never_exceeded(tmp_path: Path) -> None:
    res, _ = resident({"a": 3, "b": 3, "c": 3}, tmp_path, device_bytes=7 * MiB)
    peak = 0
    for name in ["a", "b", "c", "a", "b"]:
        res.get(name)
        peak = max(peak, res.used())
    assert peak <= 7 * MiB
    assert len(res.resident) == 2


def test_the_model_the_worker_no_longer_wants_goes_first(tmp_path: Path) -> None:
    res, _ = resident({"a": 1, "b": 1, "c": 1}, tmp_path, max_resident=2)
    res.get("a")
    res.get("b")
    res.wanted = frozenset({"a", "c"})  # the worker gave b's queue up
    res.get("c")
    assert set(res.resident) == {"a", "c"}


def test_a_resident_model_costs_no_load(tmp_path: Path) -> None:
    res, loads = resident({"a": 1}, tmp_path, max_resident=1)
    res.get("a")
    _, again = res.get("a")
    assert loads.calls == ["a"] and again == 0.0
    assert [e.model for e in res.events if isinstance(e, Loaded)] == ["a"]  # type: ignore[attr-defined]


def test_a_model_that_cannot_load_fails_with_its_reason_and_is_not_tried_again(
    tmp_path: Path,
) -> None:
    res, loads = resident({"a": 1, "bad": 1}, tmp_path, max_resident=1)
    loads.fail.add("bad")
    res.get("a")
    for _ in range(3):
        with pytest.raises(ModelUnavailable, match="model bad cannot load: ValueError: header"):
            res.get("bad")
    assert loads.calls == ["a", "bad"]
    assert list(res.resident) == []  # room was made for it; the others load again on demand
    res.get("a")
    assert list(res.resident) == ["a"]


def test_a_model_larger_than_the_budget_is_refused_naming_both(tmp_path: Path) -> None:
    res, _ = resident({"big": 5}, tmp_path, device_bytes=4 * MiB)
    with pytest.raises(ModelUnavailable, match=r"model big needs 5 MiB .* budget of 4 MiB"):
        res.get("big")
    assert res.used() == 0


def test_out_of_memory_while_loading_evicts_the_others_and_retries_once(tmp_path: Path) -> None:
    res, loads = resident({"a": 1, "b": 1}, tmp_path, max_resident=2)
    res.get("a")
    loads.oom["b"] = 1
    res.get("b")
    assert list(res.resident) == ["b"] and loads.calls == ["a", "b", "b"]


def test_out_of_memory_twice_fails_its_model_with_out_of_memory(tmp_path: Path) -> None:
    res, loads = resident({"a": 1}, tmp_path, max_resident=1)
    loads.oom["a"] = 2
    with pytest.raises(OutOfMemory, match="model a does not fit"):
        res.get("a")
    assert loads.calls == ["a", "a"]


def test_capacity_counts_the_biggest_model_against_the_bytes(tmp_path: Path) -> None:
    res, _ = resident({"a": 2, "b": 3}, tmp_path, device_bytes=7 * MiB, max_resident=3)
    res.get("a")
    res.get("b")
    assert res.capacity() == 2  # 7 MiB // 3 MiB
