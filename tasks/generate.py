"""``kiln.generate``: one job per Celery message, batched by the worker's engine.

The task thread validates, hands the request to the engine (which batches it with
other jobs for the same model), then encodes and uploads PNGs while the engine
already runs the next batch. Bad input fails the job at once and is never retried;
transient storage or broker errors are retried with backoff; a job re-delivered
after its worker died runs again (storage keys derive from the job id, so a re-run
overwrites) until ``max_deliveries``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import shared_task
from marshmallow import ValidationError

from config.errors import (
    Canceled,
    GenerationFailed,
    InvalidInput,
    KilnError,
    TooManyDeliveries,
    TransientError,
)
from tasks import metrics, queues
from tasks import runtime as rt
from tasks.celery_app import GENERATE
from tasks.images import encode_png
from tasks.jobs import TERMINAL, now
from tasks.limits import Wedged, wait_result
from tasks.records import new_record, task_result
from tasks.schema import load_job
from tasks.storage import image_key
from tasks.webhooks import enqueue as enqueue_webhook

log = logging.getLogger("kiln.generate")
TRANSIENT_RETRIES = 3  # storage or broker errors: retried after 2, 4, 8 s, then the job fails


class RunningElsewhere(Exception):
    """A re-delivered message for a job that a live worker is still running."""

    def __init__(self, worker: str) -> None:
        super().__init__(worker)
        self.worker = worker


# Celery's own retry counter is not used as a limit (``max_retries=None``): re-checks of a
# job that runs elsewhere must go on as long as it runs, so the limits live in the job
# record (``retries`` for transient errors, ``attempts`` for deliveries).
@shared_task(name=GENERATE, bind=True, acks_late=True, max_retries=None)
def generate(self: Any, *args: Any, **payload: Any) -> dict[str, Any]:
    """Generate images for one job; returns the job record (JSON)."""
    runtime = rt.current()
    job_id = str(payload.get("job_id") or self.request.id)
    if runtime is None:
        raise RuntimeError("kiln.generate runs only in a `kiln worker` process")
    if args:  # the task takes keyword arguments only: fail the job, not the worker
        return task_result(
            reject(
                runtime,
                payload,
                job_id,
                {"_schema": ["kiln.generate takes keyword arguments only"]},
            )
        )
    try:
        return task_result(run_job(runtime, payload, job_id=job_id))
    except RunningElsewhere as exc:
        # The broker re-delivered a job whose worker still beats (a healthy job that
        # outran the visibility timeout): look again later instead of running it twice.
        log.warning(
            "job %s still runs on %s; checking again in %ss",
            job_id,
            exc.worker,
            rt.RECHECK_S,
            extra={"job_id": job_id},
        )
        raise self.retry(countdown=rt.RECHECK_S) from None
    except TransientError as exc:
        retries = int((runtime.store.get(job_id) or {}).get("retries") or 0)
        if retries >= TRANSIENT_RETRIES:
            return task_result(finish(runtime, job_id, exc))
        countdown = min(60, 2 ** (retries + 1))
        log.warning(
            "job %s: %s; retry in %ss", job_id, exc.message, countdown, extra={"job_id": job_id}
        )
        runtime.store.transition(
            job_id,
            status="queued",
            allowed_from=("running",),
            event="retrying",
            data={"reason": exc.code, "in_s": countdown},
            retries=retries + 1,
        )
        raise self.retry(exc=exc, countdown=countdown) from None
    except Exception as exc:  # a bug must never leave a job "running" forever
        log.exception("job %s: unexpected %s", job_id, type(exc).__name__, extra={"job_id": job_id})
        return task_result(
            finish(runtime, job_id, GenerationFailed(f"internal error: {type(exc).__name__}"))
        )


def finish(runtime: rt.Runtime, job_id: str, exc: KilnError) -> dict[str, Any]:
    """End a job as failed (or canceled), then send its webhook."""
    status = "canceled" if isinstance(exc, Canceled) else "failed"
    data: dict[str, Any] = {"error": exc.to_dict()}
    if job_id in runtime.steps:  # how far it ran, and where the cancel found it
        data["steps_done"] = runtime.steps[job_id]
        if job_id in runtime.cancel_seen:
            data["cancel_seen_at_step"] = runtime.cancel_seen[job_id]
    runtime.store.transition(
        job_id,
        status=status,
        allowed_from=("queued", "running"),
        event=status,
        data=data,
        completed_at=now(),
        error=exc.to_dict(),
    )
    queues.mark_dequeued(runtime.store.redis, runtime.model.name, job_id)
    log.info("job %s %s: %s", job_id, status, exc.message, extra={"job_id": job_id})
    record = runtime.store.get(job_id) or {"id": job_id, "status": status}
    queues.mark_inactive(runtime.store.redis, record.get("owner"), job_id)
    metrics.job_finished(runtime.store.redis, runtime.model.name, status, record)
    enqueue_webhook(runtime.celery, record)
    return record


def reject(
    runtime: rt.Runtime,
    payload: dict[str, Any],
    job_id: str,
    fields: dict[str, Any],
    message: str = "invalid kiln.generate payload",
) -> dict[str, Any]:
    """A malformed message (another service's wrong fields) fails its job with the fields."""
    if runtime.store.get(job_id) is None:
        model = payload.get("model")
        runtime.store.create(
            {
                "id": job_id,
                "status": "queued",
                "created_at": now(),
                "model": model if isinstance(model, str) else None,
                "source": "celery",
                "attempts": 0,
                "images": [],
                "error": None,
                "webhook": None,
            }
        )
    return finish(runtime, job_id, InvalidInput(message, fields=fields))


def run_job(runtime: rt.Runtime, payload: dict[str, Any], *, job_id: str) -> dict[str, Any]:
    store = runtime.store
    # 1. Validate. A malformed message from another service fails its job, never the worker.
    try:
        params = load_job(payload, runtime.registry, task=True)
    except ValidationError as exc:
        fields = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        return reject(runtime, payload, job_id, fields)
    if params["model"] != runtime.model.name:
        return reject(
            runtime,
            payload,
            job_id,
            {"model": ["sent to the wrong queue"]},
            f"this worker serves {runtime.model.name!r}, not {params['model']!r}",
        )

    # 2. Jobs sent straight to the Celery task get their record here.
    record = store.get(job_id)
    if record is None:
        store.create(new_record(job_id, params, source="celery"))
        record = store.get(job_id) or {}  # another copy may have created it first
    if record.get("status") in TERMINAL:  # canceled while queued, or re-delivered after it ended
        queues.mark_dequeued(store.redis, runtime.model.name, job_id)
        return record

    # On Redis a healthy job that outruns the visibility timeout is delivered again; on
    # RabbitMQ a message only comes back once its consumer is gone.
    owner = record.get("worker")
    redis_broker = runtime.settings.broker_url.startswith(("redis", "rediss", "valkey"))
    if (
        redis_broker
        and record.get("status") == "running"
        and owner
        and owner != runtime.hostname
        and rt.worker_alive(store, runtime.model.name, owner)
    ):
        raise RunningElsewhere(owner)
    with runtime.lock:  # several copies may land on this worker at once: one runs
        if job_id in runtime.active:
            raise RunningElsewhere(runtime.hostname)
        runtime.active.add(job_id)
    try:
        return _claimed(runtime, job_id, params, record)
    finally:
        runtime.active.discard(job_id)
        runtime.steps.pop(job_id, None)
        runtime.cancel_seen.pop(job_id, None)


def _claimed(
    runtime: rt.Runtime, job_id: str, params: dict[str, Any], record: dict[str, Any]
) -> dict[str, Any]:
    store = runtime.store
    # 3. Count the delivery; a job that keeps killing workers stops here. Runs that
    # were planned retries of a transient error (``retries``) are not lost deliveries.
    # (The record was read just before; the transition below only moves a live job.)
    attempts = int(record.get("attempts") or 0) + 1
    deliveries = attempts - int(record.get("retries") or 0)
    if deliveries > runtime.settings.max_deliveries:
        record = store.get(job_id) or record  # fresh: another copy may have just finished it
        if record.get("status") in TERMINAL:
            return record
        return finish(
            runtime,
            job_id,
            TooManyDeliveries(
                f"job was delivered {deliveries} times without finishing (its worker died "
                f"each time); giving up"
            ),
        )
    _prev, applied = store.transition(
        job_id,
        status="running",
        allowed_from=("queued", "running"),
        event="started",
        data={"attempt": attempts, "worker": runtime.hostname},
        started_at=now(),
        attempts=attempts,
        worker=runtime.hostname,
    )
    queues.mark_dequeued(store.redis, runtime.model.name, job_id)
    if not applied:
        return store.get(job_id) or record
    return _run_started(runtime, job_id, params)


def _run_started(runtime: rt.Runtime, job_id: str, params: dict[str, Any]) -> dict[str, Any]:
    store = runtime.store
    # 4. Generate (the engine batches this with other jobs).
    try:
        result = _generate(runtime, job_id, params)
    except TransientError:
        raise
    except KilnError as exc:
        record = finish(runtime, job_id, exc)
        if isinstance(exc, Wedged):
            runtime.abort(exc.message)  # a fresh worker takes over; others are re-delivered
        return record

    # 5. Encode and upload on this thread, while the engine runs the next batch.
    store.progress(job_id, params["steps"], params["steps"])
    t_upload = time.perf_counter()
    images = _upload(runtime, job_id, params, result)
    upload_s = time.perf_counter() - t_upload
    metrics.UPLOAD.labels(params["model"]).observe(upload_s)
    metrics.RUN.labels(params["model"]).observe(result.run_s)

    # 6. Done, unless it was canceled meanwhile.
    batch = result.batches[-1] if result.batches else None
    _prev, applied = store.transition(
        job_id,
        status="succeeded",
        allowed_from=("running",),
        event="succeeded",
        data={"images": len(images)},
        completed_at=now(),
        images=images,
        progress={"step": params["steps"], "steps": params["steps"]},
        batch_id=batch.id if batch else None,
        batch_size=batch.size if batch else None,
        batches=[{"id": b.id, "size": b.size, "scheduler": b.scheduler} for b in result.batches],
        run_s=round(result.run_s, 4),
        upload_s=round(upload_s, 4),
    )
    record = store.get(job_id) or {}
    queues.mark_inactive(store.redis, record.get("owner"), job_id)
    if applied:
        metrics.job_finished(store.redis, params["model"], "succeeded", record)
        log.info(
            "job %s succeeded: %d image(s), batch %s of %s",
            job_id,
            len(images),
            batch.id if batch else "-",
            batch.size if batch else "-",
            extra={
                "job_id": job_id,
                "model": params["model"],
                "batch_id": batch.id if batch else None,
                "duration_s": round(result.run_s, 4),
                "upload_s": round(upload_s, 4),
            },
        )
        enqueue_webhook(runtime.celery, record)
    return record


def _generate(runtime: rt.Runtime, job_id: str, params: dict[str, Any]) -> Any:
    from pipelines.batch import Params
    from pipelines.engine import Request

    cancel = runtime.cancel_events.setdefault(job_id, threading.Event())
    writer = runtime.progress
    rec = runtime.store.get(job_id) or {}
    if rec.get("cancel_requested"):  # the cancel came before this thread was listening
        runtime.cancel_seen.setdefault(job_id, 0)
        cancel.set()
    runtime.steps[job_id] = 0

    def on_progress(step: int, steps: int) -> None:
        runtime.steps[job_id] = step  # unthrottled, in memory: where a cancel finds it
        if writer is not None:
            writer.update(job_id, step, steps)

    request = Request(
        id=job_id,
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
        ),
        on_progress=on_progress,
        cancel_event=cancel,
    )
    spec = runtime.model.spec
    future = runtime.engine.submit(request)
    try:
        return wait_result(future, cancel, soft_s=spec.soft_time_limit_s, hard_s=spec.time_limit_s)
    finally:
        runtime.cancel_events.pop(job_id, None)
        if writer is not None:
            writer.discard(job_id)


def _upload(runtime: rt.Runtime, job_id: str, params: dict[str, Any], result: Any) -> list[dict]:
    images = []
    for i, (image, seed) in enumerate(zip(result.images, result.seeds, strict=True)):
        meta = {
            k: params[k]
            for k in (
                "prompt",
                "negative_prompt",
                "model",
                "steps",
                "guidance_scale",
                "scheduler",
                "width",
                "height",
            )
        }
        meta.update(seed=seed, job_id=job_id, index=i)
        if params["loras"]:
            meta["loras"] = params["loras"]
        key = image_key(job_id, i)
        runtime.storage.put(key, encode_png(image, meta), metadata={"seed": str(seed)})
        images.append(
            {
                "url": runtime.storage.url(key),
                "key": key,
                "seed": seed,
                "width": image.width,
                "height": image.height,
            }
        )
    return images
