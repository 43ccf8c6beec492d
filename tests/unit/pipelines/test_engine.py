"""The engine: batches compatible requests, never mixes shapes, survives failures."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from PIL import Image

from config.errors import Canceled, GenerationFailed, OutOfMemory
from harness.pipelines import REGISTRY
from pipelines.batch import Params
from pipelines.engine import Engine, Request
from pipelines.registry import resolve

PARAMS = Params(width=64, height=64, steps=3, guidance_scale=7.5, scheduler="euler")


def tiny(max_batch: int = 8, max_wait_ms: int = 200):
    return resolve(replace(REGISTRY["tiny-sd"].spec, max_batch=max_batch, max_wait_ms=max_wait_ms))


class FakePipe:
    """Records call sizes; can fail, run out of memory, or block until released."""

    def __init__(self, *, oom_above: int | None = None, fail_prompt: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.oom_above = oom_above
        self.fail_prompt = fail_prompt
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, **kw: Any) -> Any:
        prompts = kw["prompt"]
        self.gate.wait(10)
        if self.oom_above is not None and len(prompts) > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        if self.fail_prompt in prompts:
            raise RuntimeError("boom")
        self.calls.append(list(prompts))
        for step in range(kw["num_inference_steps"]):
            kw["callback_on_step_end"](self, step, None, {})
            if getattr(self, "_interrupt", False):
                break
        size = (kw["width"], kw["height"])
        return SimpleNamespace(images=[Image.new("RGB", size) for _ in prompts])


def fake_loaded(model, pipe: FakePipe) -> Any:
    return SimpleNamespace(
        model=model,
        pipe=pipe,
        device="cpu",
        set_scheduler=lambda name: None,
        set_loras=lambda loras: None,
    )


def engine_with(pipe: FakePipe, **kw: Any) -> Engine:
    model = tiny(**kw)
    eng = Engine(model, models_dir=None, load=lambda: fake_loaded(model, pipe))  # type: ignore[arg-type]
    eng.start()
    eng.wait_ready(10)
    return eng


def req(i: int, *, params: Params = PARAMS, n: int = 1, **kw: Any) -> Request:
    return Request(
        id=f"r{i}", prompt=f"prompt {i}", seeds=[i * 10 + k for k in range(n)], params=params, **kw
    )


def test_compatible_requests_share_pipeline_calls() -> None:
    pipe = FakePipe()
    pipe.gate.clear()  # hold the first call so the rest queue up behind it
    eng = engine_with(pipe, max_batch=8)
    futures = [eng.submit(req(i)) for i in range(9)]
    time.sleep(0.05)
    pipe.gate.set()
    results = [f.result(10) for f in futures]
    eng.stop()
    assert len(pipe.calls) < 9
    assert sum(len(c) for c in pipe.calls) == 9
    assert max(len(c) for c in pipe.calls) <= 8
    batch_ids = {r.batches[0].id for r in results}
    assert len(batch_ids) == len(pipe.calls)


def test_incompatible_shapes_are_never_mixed() -> None:
    pipe = FakePipe()
    eng = engine_with(pipe, max_batch=8, max_wait_ms=100)
    big = replace(PARAMS, width=128, height=128)
    futures = [eng.submit(req(i, params=big if i % 2 else PARAMS)) for i in range(8)]
    results = [f.result(10) for f in futures]
    eng.stop()
    for i, r in enumerate(results):  # each request got images of its own size
        assert [im.size for im in r.images] == [(128, 128) if i % 2 else (64, 64)]
    for call in pipe.calls:
        odd = {int(p.split()[1]) % 2 for p in call}
        assert len(odd) == 1, f"mixed shapes in one call: {call}"


def test_a_job_with_more_images_than_max_batch_spans_batches() -> None:
    pipe = FakePipe()
    eng = engine_with(pipe, max_batch=2, max_wait_ms=10)
    result = eng.submit(req(1, n=3)).result(10)
    eng.stop()
    assert result.seeds == [10, 11, 12] and len(result.images) == 3
    assert [b.size for b in result.batches] == [2, 1]


def test_a_failing_batch_fails_only_its_requests() -> None:
    pipe = FakePipe(fail_prompt="prompt 1")
    eng = engine_with(pipe, max_batch=1, max_wait_ms=0)
    bad, good = eng.submit(req(1)), eng.submit(req(2))
    with pytest.raises(GenerationFailed, match="boom"):
        bad.result(10)
    assert good.result(10).images
    assert eng.submit(req(3)).result(10).images  # the engine thread is alive
    eng.stop()


def test_a_broken_progress_callback_never_breaks_the_batch() -> None:
    def explode(step: int, steps: int) -> None:
        raise ValueError("callback bug")

    eng = engine_with(FakePipe(), max_wait_ms=0)
    assert eng.submit(req(1, on_progress=explode)).result(10).images
    eng.stop()


def test_progress_reaches_steps() -> None:
    seen: list[tuple[int, int]] = []
    eng = engine_with(FakePipe(), max_wait_ms=0)
    eng.submit(req(1, on_progress=lambda s, n: seen.append((s, n)))).result(10)
    eng.stop()
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_cancel_before_and_during_a_batch() -> None:
    pipe = FakePipe()
    pipe.gate.clear()
    eng = engine_with(pipe, max_batch=4, max_wait_ms=0)
    blocker = eng.submit(req(0))
    time.sleep(0.05)
    queued_cancel = threading.Event()
    queued = eng.submit(req(1, cancel_event=queued_cancel))
    queued_cancel.set()
    pipe.gate.set()
    blocker.result(10)
    with pytest.raises(Canceled):
        queued.result(10)

    # Mid-batch: cancel one request at step 2; its batch-mate finishes.
    stop = threading.Event()
    mate_steps: list[int] = []

    def cancel_at_2(step: int, steps: int) -> None:
        if step == 2:
            stop.set()

    pipe.gate.clear()
    eng.submit(req(9))  # occupy the thread so the next two share a batch
    time.sleep(0.05)
    victim = eng.submit(req(2, cancel_event=stop, on_progress=cancel_at_2))
    mate = eng.submit(req(3, on_progress=lambda s, n: mate_steps.append(s)))
    pipe.gate.set()
    assert mate.result(10).images
    with pytest.raises(Canceled, match="step"):
        victim.result(10)
    assert mate_steps == [1, 2, 3]
    eng.stop()


def test_out_of_memory_splits_the_batch_and_lowers_max_batch() -> None:
    pipe = FakePipe(oom_above=2)
    pipe.gate.clear()
    eng = engine_with(pipe, max_batch=8)
    futures = [eng.submit(req(i)) for i in range(8)]
    pipe.gate.set()
    assert all(f.result(10).images for f in futures)
    assert max(len(c) for c in pipe.calls) <= 2
    assert eng.shape_limits[(64, 64)] <= 2
    assert eng.stats["oom_splits"] >= 1
    eng.stop()


def test_one_image_that_cannot_fit_fails_clearly() -> None:
    eng = engine_with(FakePipe(oom_above=0), max_wait_ms=0)
    with pytest.raises(OutOfMemory, match="does not fit"):
        eng.submit(req(1)).result(10)
    eng.stop()


def test_real_tiny_model_through_the_engine(loaded_models) -> None:
    loaded = loaded_models("tiny-sd")
    eng = Engine(loaded.model, models_dir=None, load=lambda: loaded)  # type: ignore[arg-type]
    eng.start()
    eng.wait_ready(30)
    futures = [eng.submit(req(i)) for i in range(4)]
    results = [f.result(60) for f in futures]
    eng.stop()
    assert all(r.images[0].size == (64, 64) for r in results)


def test_the_engine_loads_at_the_cpu_dtype_it_is_given(tiny_models_dir) -> None:
    """The worker's KILN_CPU_DTYPE reaches the loader on the engine thread."""
    eng = Engine(REGISTRY["tiny-sd"], models_dir=tiny_models_dir, device="cpu", cpu_dtype="bf16")
    eng.start()
    eng.wait_ready(120)
    result = eng.submit(req(1)).result(60)
    eng.stop()
    assert eng.loaded.dtype is torch.bfloat16
    assert result.images[0].size == (64, 64)
