"""``kiln worker --model M [--gpu I]``, or ``--models a,b,c [--max-resident N]``.

Pins the GPU with ``CUDA_VISIBLE_DEVICES`` before torch is imported, loads and
warms the model (those that fit) in the engine thread, and only then consumes their
queues on a threads pool big enough to fill two batches (one running, one gathering).
A worker serving several models changes the queues it consumes as demand moves
(``tasks.worker.swapping``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import replace
from typing import Any

from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from config.settings import Settings, get_settings
from tasks.messaging.app import get_celery
from tasks.messaging.names import queue_for
from tasks.worker import metrics
from tasks.worker import runtime as rt
from tasks.worker.reaper import Reaper
from tasks.worker.swapping import Swapper

log = logging.getLogger("kiln.worker")


def worker_name(
    model: str, gpu: int | None, host: str | None = None, pid: int | None = None
) -> str:
    """``sdxl@gpu0.4242@host``: model, device and host, and the process id, so that two
    processes never share a name (pods on the host network may all pass ``--gpu 0``)."""
    device = f"gpu{gpu}" if gpu is not None else "cpu"
    return f"{model}@{device}.{pid or os.getpid()}@{host or socket.gethostname()}"


def check_device(settings: Settings, model: str, gpu: int | None) -> str:
    """The device this worker serves on; a GPU asked for and not there is refused here,
    in one line, before anything loads or the worker says it is ready."""
    from pipelines.devices import require_cuda, serving_device
    from pipelines.registry import Registry

    dtype = Registry.from_settings(settings)[model].spec.dtype
    device, asked_by = serving_device(
        device=settings.device, gpu=gpu, profile=settings.profile, dtype=dtype
    )
    if asked_by is not None:
        require_cuda(device, asked_by=asked_by)
    return device


def run_worker(
    model: str,
    *,
    models: tuple[str, ...] = (),
    max_resident: int | None = None,
    gpu: int | None = None,
    concurrency: int | None = None,
    loglevel: str = "INFO",
    metrics_port: int = 0,
    extra_args: tuple[str, ...] = (),
) -> None:
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before torch is imported
    settings = get_settings()
    # inductor's FX graph and autotuning caches, kept where the worker's data is kept (a
    # volume in compose and Kubernetes, /var/lib/kiln under systemd) unless set.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(settings.data_dir / "inductor"))
    several = bool(models)
    served = tuple(dict.fromkeys((model, *models)))
    for each in served:
        device = check_device(settings, each, gpu)
    settings = replace(settings, device=device)
    name = worker_name("+".join(served), gpu)
    runtime = rt.build(settings, model, hostname=name, models=models, max_resident=max_resident)
    held = runtime.wanted

    metrics.serve(metrics_port)
    t0 = time.perf_counter()
    runtime.start_engine()
    load_s = time.perf_counter() - t0
    if not several:
        metrics.MODEL_LOAD.labels(model).set(load_s)
    log.info(
        "model %s ready in %.2fs (worker %s)",
        ", ".join(held),
        load_s,
        name,
        extra={"model": model, "duration_s": round(load_s, 3), "worker": name},
    )
    runtime.storage.ensure_bucket()
    swapper = Swapper(runtime)

    def on_ready(sender: Any = None, **_: Any) -> None:
        runtime.consumer = sender
        runtime.start_heartbeat()
        Reaper(runtime).start()
        if several and len(served) > 1:
            swapper.start()

    def on_shutdown(**_: Any) -> None:
        runtime.stop()

    def on_shutting_down(**_: Any) -> None:
        swapper.stop()
        runtime.stop_taking_jobs()  # /readyz stops counting it; alive until the drain ends

    worker_ready.connect(on_ready, weak=False)
    worker_shutting_down.connect(on_shutting_down, weak=False)
    worker_shutdown.connect(on_shutdown, weak=False)

    runtime.celery = get_celery()
    runtime.start_cancel_listener()
    threads = concurrency or max(2, 2 * max(m.spec.max_batch for m in runtime.served.values()))
    argv = [
        "worker",
        f"--queues={','.join(queue_for(m) for m in held)}",
        "--pool=threads",
        f"--concurrency={threads}",
        f"--hostname={name}",
        f"--loglevel={loglevel}",
        "--prefetch-multiplier=1",
        "--task-events",
        "--without-gossip",
        "--without-mingle",
        *extra_args,
    ]
    get_celery().worker_main(argv)
