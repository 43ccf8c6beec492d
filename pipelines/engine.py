"""The engine: one thread per worker process owns all torch work and batches requests.

Requests arrive from many task threads (``submit`` is thread-safe). The engine
thread gathers queued images with the same :class:`~pipelines.batch.Params` until
``max_batch`` images or ``max_wait_ms`` after the oldest, runs ONE pipeline call,
and resolves each request's future once all of its images exist. A request with
``n`` images takes ``n`` slots and may span batches. The thread loads and warms
the model itself (torch used from two threads runs markedly slower on the CPU)
and survives any failure of a batch, failing only that batch's requests.

One budget holds whoever the requests came from: a call never holds more than the
model's ``max_pixels_per_batch`` (nor more images than an out-of-memory split has
shown to fit for that shape). Each request's :class:`PipelineClock` counts only the
time it spends inside pipeline calls, so that its time limits are its own, and its
``on_start`` callback says when the first call holding its images begins (until then
the request is waiting, not running).

An engine may serve several models on one device (:class:`~pipelines.resident.Resident`
decides which are resident): a batch holds one model's requests, a model that is not
resident is loaded on this thread before its batch, and batches of resident models go
first unless another model's oldest request has waited ``max_swap_wait_s``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.errors import Canceled, EngineNotReady, GenerationFailed, KilnError, OutOfMemory
from pipelines.batch import Item, Params, run_batch
from pipelines.clock import PipelineClock
from pipelines.registry import Model
from pipelines.resident import Resident

log = logging.getLogger("kiln.engine")


@dataclass(kw_only=True)
class Request:
    id: str
    prompt: str
    model: str = ""  # which of the engine's models; "": its first
    negative_prompt: str | None = None
    seeds: list[int]
    params: Params
    image: Any = None  # image modes: the init image, already params' size
    mask: Any = None  # inpaint: the binary mask, white = repaint
    on_progress: Callable[[int, int], None] | None = None
    # Called on the engine thread, with the wall-clock time, when the first pipeline
    # call holding this request's images begins: the request is on the device from now.
    # Keep it cheap (no I/O): the call waits for it.
    on_start: Callable[[float], None] | None = None
    cancel_event: threading.Event | None = None
    clock: PipelineClock = field(default_factory=PipelineClock)
    load_wait_s: float = 0.0  # set before ``on_start``: its model was loaded for it


@dataclass
class BatchInfo:
    id: str
    size: int
    scheduler: str = ""  # class name of the scheduler the call used
    model: str = ""


@dataclass
class Result:
    images: list[Any]
    seeds: list[int]
    batches: list[BatchInfo]
    run_s: float


@dataclass(eq=False)
class _Pending:
    request: Request
    future: Future[Result]
    arrived: float
    todo: collections.deque[int]  # image indexes not yet scheduled
    images: dict[int, Any] = field(default_factory=dict)
    batches: list[BatchInfo] = field(default_factory=list)
    run_s: float = 0.0
    started: bool = False

    @property
    def canceled(self) -> bool:
        ev = self.request.cancel_event
        return ev is not None and ev.is_set()


class _Abort(Exception):
    """Raised from the step callback when every request of a batch was canceled."""


def _default_load(model: Model, models_dir: Path, device: str, cpu_dtype: str) -> Any:
    from pipelines.loader import load_model, warm_up

    loaded = load_model(model, device=device, models_dir=models_dir, cpu_dtype=cpu_dtype)
    warm_up(loaded)
    return loaded


class Engine:
    def __init__(
        self,
        model: Model,
        *,
        models_dir: Path,
        device: str = "",
        cpu_dtype: str = "fp32",
        load: Callable[[], Any] | None = None,
        on_batch: Callable[[BatchInfo, float, float], None] | None = None,
        resident: Resident | None = None,
        initial: tuple[str, ...] = (),
        max_swap_wait_s: float = 10.0,
    ) -> None:
        self.model = model
        self._load = load or (lambda: _default_load(model, models_dir, device, cpu_dtype))
        self.on_batch = on_batch
        self.resident = resident  # None: one model, loaded at start and kept
        self.initial = initial or (model.name,)
        self.max_swap_wait_s = max_swap_wait_s
        self.loaded: Any = None
        self._load_error: BaseException | None = None
        self._ready = threading.Event()
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._shape_limits: dict[str, dict[tuple[int, int], int]] = {}
        self.stats: dict[str, Any] = {
            "calls": 0,
            "images": 0,
            "oom_splits": 0,
            "batch_sizes": collections.Counter(),
            "failures": 0,
        }

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._main, name=f"kiln-engine-{self.model.name}", daemon=True
        )
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> None:
        if not self._ready.wait(timeout):
            raise EngineNotReady(f"model {self.model.name} not loaded after {timeout}s")
        if self._load_error is not None:
            raise self._load_error

    def stop(self, timeout: float = 10) -> None:
        with self._cond:
            self._stopping = True
            pending, self._pending = self._pending, []
            self._cond.notify_all()
        for p in pending:
            _fail(p, EngineNotReady("worker is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, request: Request) -> Future[Result]:
        """Queue a request; the future resolves with all of its images."""
        fut: Future[Result] = Future()
        if not request.seeds:
            fut.set_exception(GenerationFailed("request has no seeds"))
            return fut
        p = _Pending(request, fut, time.monotonic(), collections.deque(range(len(request.seeds))))
        with self._cond:
            if self._stopping:
                fut.set_exception(EngineNotReady("worker is shutting down"))
                return fut
            self._pending.append(p)
            self._cond.notify_all()
        return fut

    # -- the engine thread --------------------------------------------------------
    @property
    def shape_limits(self) -> dict[tuple[int, int], int]:
        """Images per call an out-of-memory split found for each shape of its first model."""
        return self._shape_limits.setdefault(self.model.name, {})

    def _spec(self, name: str) -> Any:
        models = self.resident.models if self.resident is not None else {}
        return models.get(name, self.model).spec

    def _main(self) -> None:
        try:
            if self.resident is None:
                self.loaded = self._load()
            else:
                self.resident.keep(self.initial)
        except BaseException as exc:
            log.exception("loading %s failed", self.model.name)
            self._load_error = exc
            self._ready.set()
            return
        self._ready.set()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            key, slots = batch
            if self._bring(key[0], slots):
                self._run(key, slots)

    def _bring(self, name: str, slots: list[tuple[_Pending, int]]) -> bool:
        """Make the batch's model the one its call runs on, loading it when it is not
        resident; False when it cannot load (the batch's requests fail with why)."""
        if self.resident is None:
            return True
        try:
            self.loaded, took = self.resident.get(name)
        except KilnError as exc:
            self._fail_slots(slots, exc)
            return False
        if took:
            for p, _ in slots:
                if not p.started:
                    p.request.load_wait_s = round(took, 3)
        return True

    def _name(self, p: _Pending) -> str:
        return p.request.model or self.model.name

    def _limit(self, key: tuple[str, Params]) -> int:
        """Images in one call of this shape: ``max_batch``, lowered by what an OOM split
        found and by the model's pixel budget (one image always fits: the schema
        refuses bigger ones)."""
        name, params = key
        spec = self._spec(name)
        shapes = self._shape_limits.get(name, {})
        limit = shapes.get((params.width, params.height), spec.max_batch)
        budget = spec.limits.max_pixels_per_batch // (params.width * params.height)
        return max(1, min(limit, budget))

    def _first(self, ready: list[tuple[float, tuple[str, Params]]], now: float) -> Any:
        """The batch to run next: the oldest of a resident model, unless a model that is
        not resident has waited ``max_swap_wait_s`` (then the oldest of all)."""
        if self.resident is None:
            return min(ready, key=lambda r: r[0])[1]
        held = self.resident.resident

        def order(r: tuple[float, tuple[str, Params]]) -> tuple[int, float]:
            waited_long = now - r[0] >= self.max_swap_wait_s
            return (0 if r[1][0] in held or waited_long else 1, r[0])

        return min(ready, key=order)[1]

    def _next_batch(self) -> tuple[tuple[str, Params], list[tuple[_Pending, int]]] | None:
        with self._cond:
            while True:
                if self._stopping:
                    return None
                for p in [p for p in self._pending if p.canceled]:
                    self._pending.remove(p)
                    _fail(p, Canceled("canceled before it ran"))
                groups: dict[tuple[str, Params], list[_Pending]] = {}
                for p in self._pending:
                    groups.setdefault((self._name(p), p.request.params), []).append(p)
                now, wake = time.monotonic(), None
                ready: list[tuple[float, tuple[str, Params]]] = []
                for key, ps in groups.items():
                    oldest = min(p.arrived for p in ps)
                    deadline = oldest + self._spec(key[0]).max_wait_ms / 1000
                    if sum(len(p.todo) for p in ps) >= self._limit(key) or now >= deadline:
                        ready.append((oldest, key))
                    else:
                        wake = deadline if wake is None else min(wake, deadline)
                if ready:
                    key = self._first(ready, now)
                    return key, self._take(key, groups[key])
                self._cond.wait(None if wake is None else max(0.0, wake - now))

    def _take(self, key: tuple[str, Params], group: list[_Pending]) -> list[tuple[_Pending, int]]:
        slots: list[tuple[_Pending, int]] = []
        limit = self._limit(key)
        for p in sorted(group, key=lambda p: p.arrived):
            while p.todo and len(slots) < limit:
                slots.append((p, p.todo.popleft()))
            if not p.todo:
                self._pending.remove(p)
            if len(slots) >= limit:
                break
        return slots

    def _run(self, key: tuple[str, Params], slots: list[tuple[_Pending, int]]) -> None:
        import torch

        name, params = key
        live = [s for s in slots if not s[0].future.done()]
        if not live:
            return
        try:
            self._call(key, live)
            return
        except torch.OutOfMemoryError:
            pass  # recovered below, once out of this block (see _recover)
        except _Abort:
            return  # every request of the batch was canceled; their futures are failed
        except KilnError as exc:
            self._fail_slots(live, exc)
            return
        except Exception as exc:
            log.exception("batch failed for %s", name)
            self._fail_slots(
                live, GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}"[:500])
            )
            return
        self._recover()
        if len(live) == 1:
            self._fail_slots(
                live,
                OutOfMemory(
                    f"one {params.width}x{params.height} image does not fit in device memory"
                ),
            )
            return
        half = len(live) // 2
        shape = (params.width, params.height)
        shapes = self._shape_limits.setdefault(name, {})
        shapes[shape] = max(1, min(self._limit(key), half))
        self.stats["oom_splits"] += 1
        log.warning(
            "out of memory at batch %d for %dx%d: splitting, max_batch now %d",
            len(live),
            *shape,
            shapes[shape],
        )
        self._run(key, live[:half])
        self._run(key, live[half:])

    def _recover(self) -> None:
        """After an out-of-memory error, outside its ``except`` block (whose traceback
        holds every tensor of the failed call): free them and the allocator's cache, and
        put every component back in its dtype (a failed SDXL decode leaves its VAE in
        fp32), so that the retried halves and the next batch run as loaded."""
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        restore = getattr(self.loaded, "restore_dtypes", None)
        if restore is not None:
            restore()

    def _call(self, key: tuple[str, Params], slots: list[tuple[_Pending, int]]) -> None:
        params = key[1]
        requests = list(dict.fromkeys(p for p, _ in slots))
        info = BatchInfo(uuid.uuid4().hex[:12], len(slots), model=key[0])

        def on_step(step: int) -> bool:
            alive = 0
            for p in requests:
                if p.future.done():
                    continue
                if p.canceled:
                    self._drop(p, Canceled(f"canceled at step {step}"))
                    continue
                alive += 1
                if p.request.on_progress is not None:
                    try:
                        p.request.on_progress(step, params.steps)
                    except Exception:  # a broken callback never breaks the batch
                        log.warning("progress callback of %s failed", p.request.id, exc_info=True)
            if not alive:
                raise _Abort
            return False

        items = [
            Item(r.prompt, r.negative_prompt, r.seeds[i], r.image, r.mask)
            for r, i in ((p.request, i) for p, i in slots)
        ]
        began = time.time()
        for p in requests:
            if not p.started:
                p.started = True
                if p.request.on_start is not None:
                    try:
                        p.request.on_start(began)
                    except Exception:  # a broken callback never breaks the batch
                        log.warning("start callback of %s failed", p.request.id, exc_info=True)
        t0 = time.perf_counter()
        for p in requests:
            p.request.clock.start()
        try:
            images = run_batch(self.loaded, params, items, on_step=on_step)
        finally:
            for p in requests:
                p.request.clock.stop()
        took = time.perf_counter() - t0
        info.scheduler = type(getattr(self.loaded.pipe, "scheduler", None)).__name__
        self.stats["calls"] += 1
        self.stats["images"] += len(items)
        self.stats["batch_sizes"][len(items)] += 1
        if self.on_batch is not None:
            try:
                self.on_batch(info, took, len(items) / max(1, self._limit(key)))
            except Exception:
                log.warning("on_batch hook failed", exc_info=True)
        for (p, i), image in zip(slots, images, strict=True):
            if p.future.done():
                continue
            p.images[i] = image
            if not p.batches or p.batches[-1] is not info:
                p.batches.append(info)
                p.run_s += took
            if len(p.images) == len(p.request.seeds):
                seeds = p.request.seeds
                p.future.set_result(
                    Result(
                        [p.images[k] for k in range(len(seeds))], list(seeds), p.batches, p.run_s
                    )
                )

    def _drop(self, p: _Pending, exc: Exception) -> None:
        with self._cond:
            if p in self._pending:
                self._pending.remove(p)
        _fail(p, exc)

    def _fail_slots(self, slots: list[tuple[_Pending, int]], exc: Exception) -> None:
        self.stats["failures"] += 1
        for p in dict.fromkeys(p for p, _ in slots):
            self._drop(p, exc)


def _fail(p: _Pending, exc: Exception) -> None:
    if not p.future.done():
        p.future.set_exception(exc)
