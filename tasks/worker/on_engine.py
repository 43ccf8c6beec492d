"""A job inside the worker's engine: waiting for its batch, then running on the device.

The task thread hands the job to the engine and waits. The job stays ``queued`` (held
by this worker, counted in queue positions) until the engine begins the pipeline call
that holds its images: the engine's ``on_start`` callback (on its own thread, in memory
only) hands the start to the progress writer, which marks the whole batch ``running``
in one round trip with the time that call began, and wakes this thread, which waits
for that write before anything else is written about the job. A job that is no longer this
worker's by then (canceled, or sent again and taken by another worker) is dropped from
its batch at the next step and left as it is.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from config.errors import JobStoreUnavailable
from tasks.jobs import bookkeeping as bk
from tasks.jobs.inputs import Inputs, image_mode
from tasks.worker import runtime as rt
from tasks.worker.outages import patiently
from tasks.worker.progress import Start
from tasks.worker.time_limits import wait_result, wait_started


def generate_images(
    runtime: rt.Runtime, job_id: str, params: dict[str, Any], record: dict[str, Any]
) -> Any | None:
    """Hand the job to the engine and wait for its images within its time limits; None
    when the job stopped being this worker's to run before its batch began."""
    from pipelines.batch import Params
    from pipelines.engine import Request

    store = runtime.store
    model = runtime.served[params["model"]]
    state = runtime.job(job_id) or rt.JobState()  # held since the task claimed it
    cancel = state.cancel
    writer = runtime.writers.get(model.name)
    # A cancel asked before this process held the job: the record read in step 2 says
    # so, and one field read covers a cancel that came between that read and the claim.
    asked = record.get("cancel_requested") or patiently(
        runtime, job_id, "read the job", lambda: store.field(job_id, "cancel_requested")
    )
    state.step = 0
    if asked:
        state.stop()
    woken, finished = threading.Event(), threading.Event()
    began: list[float] = []  # the wall time its first pipeline call began
    starts: list[Start] = []
    clock = {"t0": 0.0, "steps": 0}  # for the ETA: steps reported since it began

    def on_start(at: float) -> None:  # on the engine thread: in memory only
        clock["t0"] = time.monotonic()
        began.append(at)
        if writer is not None:  # written with the rest of its batch, in one round trip
            starts.append(writer.job_started(job_id, at, load_wait_s=request.load_wait_s))
        woken.set()

    def on_progress(step: int, steps: int) -> None:
        state.step = step  # unthrottled, in memory: where a cancel finds it
        clock["steps"] += 1
        if writer is not None and not finished.is_set():
            per_step = (time.monotonic() - clock["t0"]) / clock["steps"]
            eta = bk.running_eta_s(
                step=step, steps=steps, elapsed_s=per_step * step, fallback_s=0.0
            )
            writer.update(job_id, step, steps, eta_s=eta)

    inputs = Inputs.for_settings(runtime.storage, runtime.settings)
    image, mask = patiently(
        runtime, job_id, "read the image inputs", lambda: inputs.load(params, model)
    )
    request = Request(
        id=job_id,
        model=model.name,
        prompt=params["prompt"],
        negative_prompt=params["negative_prompt"],
        seeds=list(params["seeds"]),
        params=Params(
            width=params["width"],
            height=params["height"],
            steps=params["steps"],
            guidance_scale=params["guidance_scale"],
            scheduler=params["scheduler"],
            loras=tuple((lo["name"], lo["weight"]) for lo in params["loras"]),
            mode=image_mode(params),
            strength=params.get("strength") or 1.0,
        ),
        image=image,
        mask=mask,
        on_progress=on_progress,
        on_start=on_start,
        cancel_event=cancel,
    )
    spec = model.spec
    future = runtime.engine.submit(request)
    future.add_done_callback(lambda _f: woken.set())
    try:
        # Waiting behind earlier batches: still queued.
        wait_started(woken, cancel, queue_wait_s=runtime.settings.queue_wait_limit_s)
        if began:
            try:
                mine = mark_running(
                    runtime, job_id, began[0], starts[0] if starts else None, model=model.name
                )
            except BaseException:  # back to the broker: stop running it here first
                let_go(future, cancel, spec.time_limit_s)
                raise
            if not mine:
                let_go(future, cancel, spec.time_limit_s)
                return None
        return wait_result(
            future,
            cancel,
            soft_s=spec.soft_time_limit_s,
            hard_s=spec.time_limit_s,
            clock=request.clock,
            queue_wait_s=runtime.settings.queue_wait_limit_s,
        )
    finally:
        finished.set()  # a step after this (a job let go) is not written
        if writer is not None:
            writer.discard(job_id)


def mark_running(
    runtime: rt.Runtime, job_id: str, at: float, start: Start | None, *, model: str
) -> bool:
    """Whether the job is now running here (False: it is no longer this worker's). The
    progress writer writes the start with its batch-mates'; without one, this thread
    does. Through a job-store outage of up to ``outage_budget_s``."""
    if start is None:
        return bool(
            patiently(
                runtime,
                job_id,
                "start the job",
                lambda: runtime.store.start(job_id, model=model, worker=runtime.hostname, at=at),
            )
        )
    if not start.written.wait(runtime.settings.outage_budget_s):
        raise JobStoreUnavailable("job store unreachable: the job's start was not written")
    return start.applied


def let_go(future: Any, cancel: threading.Event, timeout_s: float) -> None:
    """Have the engine drop the job at its next step, and wait until it has."""
    cancel.set()
    with contextlib.suppress(Exception):
        future.result(timeout=timeout_s)
