"""The engine: batches compatible requests, never mixes shapes, survives failures."""

from __future__ import annotations

import threading
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from PIL import Image

from config.errors import (
    Canceled,
    GenerationFailed,
    OutOfMemory,
    QueueWaitExceeded,
    TimeLimitExceeded,
)
from harness.pipelines import REGISTRY
from pipelines.batch import Params
from pipelines.engine import Engine, Request
from pipelines.registry import resolve
from tasks.worker.time_limits import wait_result

PARAMS = Params(width=64, height=64, steps=3, guidance_scale=7.5, scheduler="euler")


def tiny(max_batch: int = 8, max_wait_ms: int = 200, max_pixels: int | None = None):
    spec = replace(REGISTRY["tiny-sd"].spec, max_batch=max_batch, max_wait_ms=max_wait_ms)
    if max_pixels is not None:
        spec = replace(spec, limits=replace(spec.limits, max_pixels_per_batch=max_pixels))
    return resolve(spec)


class FakePipe:
    """Records call sizes; can fail, run out of memory, or block until released."""

    def __init__(self, *, oom_above: int | None = None, fail_prompt: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.oom_above = oom_above
        self.fail_prompt = fail_prompt
        self.gate = threading.Event()
        self.gate.set()
        self.in_call = threading.Event()  # a call has begun (and waits on the gate if shut)

    def __call__(self, **kw: Any) -> Any:
        prompts = kw["prompt"]
        self.in_call.set()
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
        pipe_for=lambda mode: pipe,
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
    assert pipe.in_call.wait(10)  # the engine holds one call; the rest wait behind it
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


def test_a_request_starts_when_its_batch_begins_not_when_it_arrives() -> None:
    """``on_start`` fires once per request, on the engine thread, when the first call
    holding its images begins: a request waiting behind another batch has not started."""
    pipe = FakePipe()
    pipe.gate.clear()  # the first call holds until released
    eng = engine_with(pipe, max_batch=2, max_wait_ms=0)
    started: dict[str, list[tuple[float, str]]] = {}

    def starts(rid: str) -> Any:
        return lambda at: started.setdefault(rid, []).append((at, threading.current_thread().name))

    first = eng.submit(req(0, on_start=starts("r0")))
    assert pipe.in_call.wait(10)  # r0's call has begun and waits on the gate
    later = [eng.submit(req(i, n=3 if i == 1 else 1, on_start=starts(f"r{i}"))) for i in (1, 2)]
    # The engine thread is inside r0's call until the gate opens: nothing else can begin.
    assert list(started) == ["r0"]  # r1 and r2 wait behind r0's batch
    pipe.gate.set()
    results = [f.result(10) for f in (first, *later)]
    eng.stop()
    assert sorted(started) == ["r0", "r1", "r2"]
    assert all(len(v) == 1 for v in started.values())  # r1 spans two calls, starts once
    assert {name for v in started.values() for _, name in v} == {"kiln-engine-tiny-sd"}
    assert len(results[1].batches) == 2
    assert started["r0"][0][0] <= started["r1"][0][0] <= started["r2"][0][0]


def test_cancel_before_and_during_a_batch() -> None:
    pipe = FakePipe()
    pipe.gate.clear()
    eng = engine_with(pipe, max_batch=4, max_wait_ms=0)
    blocker = eng.submit(req(0))
    assert pipe.in_call.wait(10)
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
    pipe.in_call.clear()
    eng.submit(req(9))  # occupy the thread so the next two share a batch
    assert pipe.in_call.wait(10)
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


def test_jobs_of_many_callers_never_share_a_call_beyond_the_pixel_budget() -> None:
    """Four jobs, each at the per-job limit (2 images of 64x64 in a 2-image budget)."""
    pipe = FakePipe()
    pipe.gate.clear()
    eng = engine_with(pipe, max_batch=8, max_pixels=64 * 64 * 2)
    eng.submit(req(0))  # holds the thread
    assert pipe.in_call.wait(10)
    futures = [eng.submit(req(i, n=2)) for i in range(1, 5)]
    pipe.gate.set()
    assert all(len(f.result(10).images) == 2 for f in futures)
    eng.stop()
    assert max(len(c) for c in pipe.calls) == 2
    assert sum(len(c) for c in pipe.calls) == 9


def test_a_light_job_behind_a_heavy_batch_is_not_failed_by_its_soft_limit() -> None:
    """The heavy batch holds the engine 1.2 s; the light job's own run is short."""
    pipe = FakePipe()
    pipe.gate.clear()
    eng = engine_with(pipe, max_batch=8, max_wait_ms=0)
    heavy = eng.submit(req(0, params=replace(PARAMS, width=128, height=128)))
    assert pipe.in_call.wait(10)
    light = req(1)
    future = eng.submit(light)
    threading.Timer(1.2, pipe.gate.set).start()
    cancel = light.cancel_event or threading.Event()
    result = wait_result(future, cancel, soft_s=0.5, hard_s=1.0, clock=light.clock)
    assert result.images and not cancel.is_set()
    assert light.clock.seconds() < 0.5 and heavy.result(10).images
    eng.stop()


def test_a_job_that_waits_too_long_in_its_worker_fails_clearly() -> None:
    pipe = FakePipe()
    pipe.gate.clear()
    eng = engine_with(pipe, max_batch=8, max_wait_ms=0)
    eng.submit(req(0, params=replace(PARAMS, width=128, height=128)))
    assert pipe.in_call.wait(10)
    waiting = req(1, cancel_event=threading.Event())
    future = eng.submit(waiting)
    assert waiting.cancel_event is not None
    with pytest.raises(QueueWaitExceeded, match=r"KILN_QUEUE_WAIT_LIMIT_S=0\.3"):
        wait_result(
            future, waiting.cancel_event, soft_s=5, hard_s=6, clock=waiting.clock, queue_wait_s=0.3
        )
    pipe.gate.set()
    with pytest.raises(Canceled):  # the engine dropped it without running it
        future.result(10)
    assert not waiting.clock.started and len(pipe.calls) == 1
    eng.stop()


def test_a_job_whose_own_run_is_too_long_still_hits_its_soft_limit() -> None:
    pipe = FakePipe()
    pipe.gate.clear()
    eng = engine_with(pipe, max_batch=8, max_wait_ms=0)
    slow = req(0, cancel_event=threading.Event())
    future = eng.submit(slow)
    threading.Timer(1.0, pipe.gate.set).start()  # inside its call until then
    assert slow.cancel_event is not None
    with pytest.raises(TimeLimitExceeded):
        wait_result(future, slow.cancel_event, soft_s=0.3, hard_s=5, clock=slow.clock)
    assert slow.clock.seconds() >= 0.3
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
    """The worker's KILN_CPU_DTYPE reaches the loader on the engine thread. At 32² (warm-up
    and request): bf16 convolutions on a CPU make tiny-sd's 64² cost seconds a call."""
    spec = REGISTRY["tiny-sd"].spec
    small = resolve(replace(spec, defaults=replace(spec.defaults, width=32, height=32)))
    eng = Engine(small, models_dir=tiny_models_dir, device="cpu", cpu_dtype="bf16")
    eng.start()
    eng.wait_ready(120)
    result = eng.submit(req(1, params=replace(PARAMS, width=32, height=32))).result(60)
    eng.stop()
    assert eng.loaded.dtype is torch.bfloat16
    assert result.images[0].size == (32, 32)
