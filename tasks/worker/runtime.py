"""What one worker process holds: its models' engine, the job store and storage.

``kiln worker --model M`` (or ``--models a,b,c``) builds it, loads and warms the model
(those that fit, in the engine's own thread), and only then starts consuming their
queues. A heartbeat every ``HEARTBEAT_S`` tells the fleet, for each model it serves,
that the worker is alive, and whether it holds that model (ready) or can load it
(standby) (``tasks.jobs.bookkeeping``: it expires ``HEARTBEAT_TTL_S`` after the last
beat).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from config.settings import Settings
from pipelines.registry import Model, Registry
from tasks.jobs import bookkeeping as bk
from tasks.jobs.storage import Storage
from tasks.jobs.store import JobStore
from tasks.worker import metrics
from tasks.worker.progress import ProgressWriter

log = logging.getLogger("kiln.worker")

HEARTBEAT_S = 2.0
HEARTBEAT_TTL_S = int(HEARTBEAT_S * 3)  # a SIGKILLed worker stops counting within 6 s
RECHECK_S = HEARTBEAT_TTL_S + 1  # a dead worker's heartbeat is gone by then


@dataclass
class JobState:
    """What this process holds for one job it runs, from its claim to its release: the
    event that stops it, the last step it finished (None before the engine has it) and
    the step at which its cancel arrived."""

    cancel: threading.Event = field(default_factory=threading.Event)
    step: int | None = None
    cancel_seen: int | None = None

    def stop(self) -> None:
        """Its cancel arrived now: remember where it was, and stop it at its next step."""
        if self.cancel_seen is None:
            self.cancel_seen = self.step or 0
        self.cancel.set()


@dataclass
class Runtime:
    settings: Settings
    registry: Registry
    model: Model
    hostname: str
    store: JobStore
    storage: Storage
    engine: Any = None
    celery: Any = None
    consumer: Any = None  # Celery's consumer (``worker_ready``'s sender): its queues
    served: dict[str, Model] = field(default_factory=dict)  # ``--models``: several
    wanted: list[str] = field(default_factory=list)  # the models whose queues it consumes
    resident: Any = None  # pipelines.resident.Resident, when it serves several
    writers: dict[str, ProgressWriter] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)  # what the engine really runs
    jobs: dict[str, JobState] = field(default_factory=dict)  # the jobs this process runs
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards ``jobs``
    _service: Any = None
    _seen: dict[str, dict[str, int]] = field(default_factory=dict)  # per model, at last batch
    _stop: threading.Event = field(default_factory=threading.Event)
    _draining: threading.Event = field(default_factory=threading.Event)
    _beat_stop: threading.Event = field(default_factory=threading.Event)
    _beat_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.served = self.served or {self.model.name: self.model}
        self.wanted = self.wanted or [self.model.name]

    def serves(self, name: str) -> Model | None:
        return self.served.get(name)

    def service(self) -> Any:
        """The job service this worker's Celery door accepts jobs through (made once)."""
        with self.lock:
            if self._service is None:
                from tasks.jobs.service import JobService
                from tasks.messaging.app import get_celery

                self._service = JobService(
                    self.settings,
                    registry=self.registry,
                    celery=self.celery or get_celery(),
                    store=self.store,
                    storage=self.storage,
                )
            return self._service

    def take(self, job_id: str) -> JobState | None:
        """Hold the job in this process; None when it holds it already (a second copy
        of its message landed here)."""
        with self.lock:
            if job_id in self.jobs:
                return None
            state = self.jobs[job_id] = JobState()
            return state

    def job(self, job_id: str) -> JobState | None:
        with self.lock:
            return self.jobs.get(job_id)

    def let_go(self, job_id: str) -> None:
        """The job's task has ended here: forget all this process held for it."""
        with self.lock:
            self.jobs.pop(job_id, None)

    def stop_job(self, job_id: str) -> bool:
        """Stop a job this process runs (its cancel arrived); False when it runs none."""
        with self.lock:
            state = self.jobs.get(job_id)
            if state is not None:
                state.stop()
            return state is not None

    def start_engine(self, *, timeout: float | None = None) -> None:
        """Start the engine thread and wait for its first models to load and warm up
        (those ``wanted``, through ``resident`` when it serves several)."""
        from pipelines.engine import Engine  # torch is imported only here, in workers

        for name in self.served:
            self.writers[name] = ProgressWriter(
                self.store, model=name, worker=self.hostname
            ).start()
        settings = self.settings
        model = self.model
        self.engine = Engine(
            model,
            models_dir=settings.models_dir,
            device=settings.device,
            cpu_dtype=settings.cpu_dtype,
            load=lambda: self.load(model),
            on_batch=self.on_batch,
            resident=self.resident,
            initial=tuple(self.wanted),
            max_swap_wait_s=settings.max_swap_wait_s,
        )
        self.engine.start()
        self.engine.wait_ready(timeout)

    def load(self, model: Model) -> Any:
        """On the engine thread: torch's threads, the load and the warm-up all there
        (after ``KILN_LOAD_DELAY_S``, which rehearses real load times)."""
        from pipelines.compiling import compiled_graphs
        from pipelines.devices import dtype_name
        from pipelines.loader import load_model, set_torch_threads, warm_up

        settings = self.settings
        time.sleep(settings.load_delay_s)
        set_torch_threads(settings.torch_threads)
        loaded = load_model(
            model,
            device=settings.device,
            models_dir=settings.models_dir,
            cpu_dtype=settings.cpu_dtype,
        )
        dtype = self.dtypes[model.name] = dtype_name(loaded.dtype)
        self.writers[model.name].measured_on = f"{loaded.device} {dtype}"
        warm_up(loaded)
        self._seen[model.name] = {"ooms": self._ooms(), "graphs": compiled_graphs(), "eager": 0}
        metrics.observe_compiles(model.name, graphs=self._seen[model.name]["graphs"], new=0)
        return loaded

    def loaded(self, load: Any) -> None:
        """A model came onto the device (``pipelines.resident.Loaded``): its metrics, and
        its load time for the fleet's ETAs."""
        metrics.model_loaded(load)
        with contextlib.suppress(Exception):  # an ETA figure: never worth failing a load
            bk.record_load(
                self.store.redis, load.model, seconds=load.seconds, device_bytes=load.device_bytes
            )

    def _ooms(self) -> int:
        return self.engine.stats["oom_splits"] if self.engine is not None else 0

    def on_batch(self, info: Any, seconds: float, fill: float) -> None:
        from pipelines.compiling import compiled_graphs

        model = info.model or self.model.name
        self.writers[model].record_batch(seconds, info.size)
        seen = self._seen.setdefault(model, {"ooms": 0, "graphs": 0, "eager": 0})
        ooms = self._ooms()
        metrics.observe_batch(
            model, seconds=seconds, size=info.size, fill=fill, oom_splits=ooms - seen["ooms"]
        )
        graphs = compiled_graphs()
        compiled = getattr(self.engine.loaded, "compiled", None) if self.engine else None
        eager = compiled.eager_calls if compiled is not None else 0
        metrics.observe_compiles(
            model, graphs=graphs, new=graphs - seen["graphs"], eager=eager - seen["eager"]
        )
        seen.update(ooms=ooms, graphs=graphs, eager=eager)
        metrics.observe_gpu(model)
        log.info(
            "batch %s: %d image(s) in %.3fs",
            info.id,
            info.size,
            seconds,
            extra={
                "model": model,
                "batch_id": info.id,
                "batch_size": info.size,
                "duration_s": round(seconds, 4),
            },
        )

    def heartbeat_forever(self) -> None:
        while not self._beat_stop.is_set():
            try:
                with self._beat_lock:  # never re-set the key after stop_heartbeat removed it
                    if not self._beat_stop.is_set():
                        self.beat()
            except Exception as exc:  # keep beating through a broker blip
                log.warning("heartbeat failed: %s", type(exc).__name__)
            self._beat_stop.wait(HEARTBEAT_S)

    def beat(self) -> None:
        """Alive for every model it serves; ready for those whose queues it consumes,
        standby for the others (it can load them); neither while it drains."""
        draining, wanted = self._draining.is_set(), set(self.wanted)
        states = {
            name: "draining" if draining else "ready" if name in wanted else "standby"
            for name in self.served
        }
        bk.beat_all(
            self.store.redis, self.hostname, HEARTBEAT_TTL_S, states=states, dtypes=self.dtypes
        )

    def stop_taking_jobs(self) -> None:
        """A warm shutdown began: no longer ready (``/readyz`` stops counting this worker
        at once), still alive while it drains, so its running jobs are not sent again."""
        self._draining.set()
        with contextlib.suppress(Exception):
            for name in self.served:
                bk.not_ready(self.store.redis, name, self.hostname)

    def stop_heartbeat(self) -> None:
        """Stop beating and remove the heartbeat (the drain has ended)."""
        with self._beat_lock:
            self._beat_stop.set()
            with contextlib.suppress(Exception):
                for name in self.served:
                    bk.unbeat(self.store.redis, name, self.hostname)

    def listen_for_cancels(self) -> None:
        """Set the cancel event of a job this worker runs when the API cancels it."""
        while not self._stop.is_set():
            try:
                pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(bk.CANCEL_CHANNEL)
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=1.0)
                    is_message = bool(msg) and msg.get("type") == "message"
                    if is_message and self.stop_job(str(msg["data"])):
                        log.info("job %s: cancel requested", msg["data"])
            except Exception as exc:  # reconnect after a broker blip
                log.warning("cancel listener: %s; reconnecting", type(exc).__name__)
                self._stop.wait(1.0)

    def start_cancel_listener(self) -> None:
        threading.Thread(target=self.listen_for_cancels, name="kiln-cancels", daemon=True).start()

    def start_heartbeat(self) -> threading.Thread:
        thread = threading.Thread(target=self.heartbeat_forever, name="kiln-heartbeat", daemon=True)
        thread.start()
        return thread

    def abort(self, reason: str) -> None:
        """End this process now (its engine is wedged): unacked jobs go to other workers."""
        log.critical("worker %s exits: %s", self.hostname, reason)
        with contextlib.suppress(Exception):
            for name in self.served:
                bk.unbeat(self.store.redis, name, self.hostname)
        logging.shutdown()
        os._exit(70)

    def stop(self) -> None:
        self._stop.set()
        self.stop_heartbeat()
        if self.engine is not None:
            self.engine.stop()
        for writer in self.writers.values():
            writer.stop()


_RUNTIME: Runtime | None = None


def build(
    settings: Settings,
    model_name: str,
    *,
    hostname: str | None = None,
    models: tuple[str, ...] = (),
    max_resident: int | None = None,
) -> Runtime:
    """The worker's runtime: ``model_name`` first, then the other ``models`` it serves
    (given any, through a memory budget: it holds and consumes at start as many of them,
    in order, as the budget fits; otherwise ``model_name`` alone)."""
    global _RUNTIME
    registry = Registry.from_settings(settings)
    names = dict.fromkeys((model_name, *models))
    _RUNTIME = Runtime(
        settings=settings,
        registry=registry,
        model=registry[model_name],
        hostname=hostname or socket.gethostname(),
        store=JobStore.for_settings(settings),
        storage=Storage(settings),
        served={name: registry[name] for name in names},
    )
    if models:
        _RUNTIME.resident = resident = build_resident(_RUNTIME, max_resident=max_resident)
        _RUNTIME.wanted = list(_RUNTIME.served)[: resident.capacity()]
        resident.wanted = frozenset(_RUNTIME.wanted)
    return _RUNTIME


def build_resident(runtime: Runtime, *, max_resident: int | None) -> Any:
    """The memory budget of a worker serving several models, from its settings and its
    device, with its load and eviction metrics."""
    from pipelines.devices import model_budget
    from pipelines.resident import Resident

    settings = runtime.settings
    return Resident(
        runtime.served,
        load=runtime.load,
        budget=model_budget(settings, max_resident=max_resident),
        device=settings.device,
        models_dir=settings.models_dir,
        on_load=runtime.loaded,
        on_evict=metrics.model_evicted,
    )


def current() -> Runtime | None:
    return _RUNTIME
