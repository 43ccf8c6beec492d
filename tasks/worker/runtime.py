"""What one worker process holds: its model's engine, the job store and storage.

``kiln worker --model M`` builds it, loads and warms the model (in the engine's
own thread), and only then starts consuming its model's queue. A heartbeat every
``HEARTBEAT_S`` tells the fleet that the worker is alive and ready
(``tasks.jobs.bookkeeping``: it expires ``HEARTBEAT_TTL_S`` after the last beat).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
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
    progress: ProgressWriter | None = None
    dtype: str = ""  # what the engine really runs (fp32 on a CPU for an fp16 entry)
    jobs: dict[str, JobState] = field(default_factory=dict)  # the jobs this process runs
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards ``jobs``
    _service: Any = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _draining: threading.Event = field(default_factory=threading.Event)
    _beat_stop: threading.Event = field(default_factory=threading.Event)
    _beat_lock: threading.Lock = field(default_factory=threading.Lock)

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
        from pipelines.compiling import compiled_graphs
        from pipelines.devices import dtype_name
        from pipelines.engine import Engine  # torch is imported only here, in workers
        from pipelines.loader import load_model, set_torch_threads, warm_up

        self.progress = ProgressWriter(
            self.store, model=self.model.name, worker=self.hostname
        ).start()
        writer = self.progress

        model = self.model.name
        seen_ooms = [0]
        seen_graphs = [0]
        seen_eager = [0]
        settings = self.settings

        def load() -> Any:  # in the engine thread: threads, load and warm-up all there
            set_torch_threads(settings.torch_threads)
            loaded = load_model(
                self.model,
                device=settings.device,
                models_dir=settings.models_dir,
                cpu_dtype=settings.cpu_dtype,
            )
            self.dtype = dtype_name(loaded.dtype)
            writer.measured_on = f"{loaded.device} {self.dtype}"
            warm_up(loaded)
            seen_graphs[0] = compiled_graphs()
            metrics.observe_compiles(model, graphs=seen_graphs[0], new=0)
            return loaded

        def on_batch(info: Any, seconds: float, fill: float) -> None:
            writer.record_batch(seconds, info.size)
            ooms = self.engine.stats["oom_splits"] if self.engine is not None else 0
            metrics.observe_batch(
                model, seconds=seconds, size=info.size, fill=fill, oom_splits=ooms - seen_ooms[0]
            )
            seen_ooms[0] = ooms
            graphs = compiled_graphs()
            compiled = getattr(self.engine.loaded, "compiled", None) if self.engine else None
            eager = compiled.eager_calls if compiled is not None else 0
            metrics.observe_compiles(
                model, graphs=graphs, new=graphs - seen_graphs[0], eager=eager - seen_eager[0]
            )
            seen_graphs[0], seen_eager[0] = graphs, eager
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

        self.engine = Engine(
            self.model,
            models_dir=self.settings.models_dir,
            device=self.settings.device,
            cpu_dtype=self.settings.cpu_dtype,
            load=load,
            on_batch=on_batch,
        )
        self.engine.start()
        self.engine.wait_ready(timeout)

    def heartbeat_forever(self) -> None:
        while not self._beat_stop.is_set():
            try:
                with self._beat_lock:  # never re-set the key after stop_heartbeat removed it
                    if not self._beat_stop.is_set():
                        bk.beat(
                            self.store.redis,
                            self.model.name,
                            self.hostname,
                            HEARTBEAT_TTL_S,
                            ready=not self._draining.is_set(),
                            dtype=self.dtype,
                        )
            except Exception as exc:  # keep beating through a broker blip
                log.warning("heartbeat failed: %s", type(exc).__name__)
            self._beat_stop.wait(HEARTBEAT_S)

    def stop_taking_jobs(self) -> None:
        """A warm shutdown began: no longer ready (``/readyz`` stops counting this worker
        at once), still alive while it drains, so its running jobs are not sent again."""
        self._draining.set()
        with contextlib.suppress(Exception):
            bk.not_ready(self.store.redis, self.model.name, self.hostname)

    def stop_heartbeat(self) -> None:
        """Stop beating and remove the heartbeat (the drain has ended)."""
        with self._beat_lock:
            self._beat_stop.set()
            with contextlib.suppress(Exception):
                bk.unbeat(self.store.redis, self.model.name, self.hostname)

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
            bk.unbeat(self.store.redis, self.model.name, self.hostname)
        logging.shutdown()
        os._exit(70)

    def stop(self) -> None:
        self._stop.set()
        self.stop_heartbeat()
        if self.engine is not None:
            self.engine.stop()
        if self.progress is not None:
            self.progress.stop()


_RUNTIME: Runtime | None = None


def build(settings: Settings, model_name: str, *, hostname: str | None = None) -> Runtime:
    global _RUNTIME
    registry = Registry.from_settings(settings)
    _RUNTIME = Runtime(
        settings=settings,
        registry=registry,
        model=registry[model_name],
        hostname=hostname or socket.gethostname(),
        store=JobStore.for_settings(settings),
        storage=Storage(settings),
    )
    return _RUNTIME


def current() -> Runtime | None:
    return _RUNTIME
