"""``kiln.generate``: one job per Celery message, batched by the worker's engine.

The task reads top to bottom as the job's steps:

1. Check the message: keyword arguments only, a valid job and job id, for this
   worker's model.
2. Find the job's record (a job sent straight to the Celery task comes in here
   through the job service's one ``accept``, as the API's jobs do: its webhook and
   image inputs checked, the inputs read once and stored); a message that reuses
   another job's id fails without touching it, and a job that already ended is not
   run again.
3. Claim it: not while a live worker still holds it, nor twice in this process;
   count the delivery (a job that keeps killing workers is given up); receive it (it
   stays queued, held by this worker: ``tasks.jobs.holding``).
4. Generate: the engine batches it with other jobs for the same model; it is running
   once its batch is on the device (``tasks.worker.on_engine``).
5. Encode (png, jpeg or webp) and upload the images on this thread, while the engine
   runs the next batch.
6. End it: succeeded, unless it was canceled meanwhile.

Bad input fails the job at once and is never retried. A job store or storage outage
is ridden out on this thread with the message unacked (``outages.patient``), and past
its budget the message goes back to the broker. A job re-delivered after its worker
died runs again (storage keys derive from the job id, so a re-run overwrites) until
``max_deliveries``. Every end goes through ``tasks.jobs.ends.end_job``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, TypeVar

from celery import shared_task
from celery.exceptions import Reject

from config.errors import (
    Canceled,
    Conflict,
    GenerationFailed,
    InvalidInput,
    KilnError,
    NotFound,
    RunningElsewhere,
    TooManyDeliveries,
    TransientError,
    Wedged,
)
from tasks.jobs.ends import end_job
from tasks.jobs.records import JOB_ID_RULE, JobRecord, task_result, valid_job_id
from tasks.jobs.request import Accepted, JobRequest
from tasks.jobs.schema import load_job
from tasks.jobs.store import LIVE, TERMINAL
from tasks.messaging.names import GENERATE
from tasks.worker import metrics
from tasks.worker import runtime as rt
from tasks.worker.direct import as_first_delivered
from tasks.worker.images import upload
from tasks.worker.on_engine import generate_images
from tasks.worker.outages import patiently
from tasks.worker.taskbase import RedactedTask

log = logging.getLogger("kiln.generate")
T = TypeVar("T")


# Celery's own retry counter is not used as a limit (``max_retries=None``): re-checks of a
# job that runs elsewhere must go on as long as it runs, so the limit lives in the job
# record (``attempts``, the deliveries).
@shared_task(name=GENERATE, base=RedactedTask, bind=True, acks_late=True, max_retries=None)
def generate(self: Any, *args: Any, **payload: Any) -> dict[str, Any]:
    """Generate images for one job; returns the job record (JSON)."""
    runtime = rt.current()
    if runtime is None:
        raise RuntimeError("kiln.generate runs only in a `kiln worker` process")
    job_id = str(payload.get("job_id") or self.request.id)
    try:
        return task_result(run_job(runtime, args, payload, job_id=job_id))
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
    except TransientError as exc:  # an outage outlasted its budget: a later delivery goes on
        log.error("job %s: %s; back to the broker", job_id, exc.message, extra={"job_id": job_id})
        raise Reject(exc.message, requeue=True) from None
    except Exception as exc:  # a bug must never leave a job "running" forever
        log.exception("job %s: unexpected %s", job_id, type(exc).__name__, extra={"job_id": job_id})
        error = GenerationFailed(f"internal error: {type(exc).__name__}")
        try:
            ended = patiently(
                runtime, job_id, "record the end", lambda: fail(runtime, job_id, error)
            )
        except TransientError:
            raise Reject(error.message, requeue=True) from None
        return task_result(ended or {"id": job_id})


def run_job(
    runtime: rt.Runtime, args: tuple[Any, ...], payload: dict[str, Any], *, job_id: str
) -> dict[str, Any]:
    store = runtime.store

    # 1. Check the message. A malformed one from another service fails its job, never
    #    the worker, and is never retried.
    try:
        if args:
            raise InvalidInput(
                "kiln.generate takes keyword arguments only",
                fields={"_schema": ["kiln.generate takes keyword arguments only"]},
            )
        params = load_job(payload, runtime.registry, task=True)
        if runtime.serves(params["model"]) is None:
            raise InvalidInput(
                f"this worker serves {', '.join(map(repr, runtime.served))}, "
                f"not {params['model']!r}",
                fields={"model": ["sent to the wrong queue"]},
            )
        if not valid_job_id(job_id):  # the task id, when no job_id came in the kwargs
            raise InvalidInput(
                f"job_id must be {JOB_ID_RULE}", fields={"job_id": [f"must be {JOB_ID_RULE}"]}
            )
    except InvalidInput as exc:
        bad = exc
        return patiently(
            runtime, job_id, "record the rejection", lambda: reject(runtime, payload, job_id, bad)
        )

    # 2. Find the record; jobs sent straight to the Celery task come in here, through
    #    the one ``accept``. A message that reuses another job's id fails alone: that
    #    job is not touched.
    record = patiently(runtime, job_id, "read the job", lambda: store.get(job_id))
    created = False
    if record is None:
        try:
            done = patiently(
                runtime, job_id, "record the job", lambda: accept(runtime, job_id, params)
            )
        except InvalidInput as exc:
            bad = exc
            return patiently(
                runtime,
                job_id,
                "record the rejection",
                lambda: reject(runtime, payload, job_id, bad),
            )
        record, created = done.record, done.created
        if created:
            params = {**params, **done.params}
    if not created:
        params = as_first_delivered(params, record, payload)
        if JobRecord.from_dict(record).differences(params, params.get("owner")):
            return refused(job_id, TAKEN)
    if record.get("status") in TERMINAL:  # canceled while queued, or re-delivered after it ended
        patiently(
            runtime,
            job_id,
            "dequeue the job",
            lambda: store.dequeue(job_id, model=params["model"]),
        )
        return record

    # 3. Claim it.
    claim(runtime, job_id, record)
    try:
        attempts = patiently(
            runtime, job_id, "count the delivery", lambda: count_delivery(runtime, job_id, record)
        )
        if attempts is None:
            return store.get(job_id) or record
        received = patiently(
            runtime,
            job_id,
            "receive the job",
            lambda: store.receive(
                job_id, model=params["model"], worker=runtime.hostname, attempt=attempts
            ),
        )
        if not received:  # canceled between the read and now
            return store.get(job_id) or record

        # 4. Generate.
        try:  # queued until its batch is on the device, running from then on
            result = generate_images(runtime, job_id, params, record)
            if result is None:  # no longer this worker's to run: left as it is
                return store.get(job_id) or record
        except TransientError:
            raise
        except KilnError as exc:
            error = exc
            ended = patiently(
                runtime, job_id, "record the end", lambda: fail(runtime, job_id, error)
            )
            if isinstance(error, Wedged):
                runtime.abort(error.message)  # a fresh worker takes over; others are re-delivered
            return ended or store.get(job_id) or record

        # 5. Encode and upload.
        with contextlib.suppress(TransientError):  # progress is best effort
            store.progress(job_id, params["steps"], params["steps"])
        t_upload = time.perf_counter()
        images = patiently(
            runtime,
            job_id,
            "upload images",
            lambda: upload(runtime.storage, job_id, params, result),
        )
        upload_s = time.perf_counter() - t_upload
        metrics.UPLOAD.labels(params["model"]).observe(upload_s)
        metrics.RUN.labels(params["model"]).observe(result.run_s)

        # 6. End it: succeeded, unless it was canceled meanwhile.
        ended = patiently(
            runtime,
            job_id,
            "record the end",
            lambda: succeed(runtime, job_id, params, result, images, upload_s),
        )
        if ended is None:  # ended meanwhile (canceled, or finished by another worker)
            ended = store.get(job_id) or record
            log.warning(
                "job %s had already ended %s (worker %s); this run's end is dropped",
                job_id,
                ended.get("status"),
                ended.get("worker"),
                extra={"job_id": job_id},
            )
        return ended
    finally:
        release(runtime, job_id)


def accept(runtime: rt.Runtime, job_id: str, params: dict[str, Any]) -> Accepted:
    """The Celery door: a message no record names yet comes in as every door's jobs do
    (``JobService.accept``: its webhook and image inputs checked as the API checks them,
    the inputs read once and stored); its message is already here, so it is only
    recorded. A job named as an input that this worker cannot find is a bad input."""
    request = JobRequest(
        fields=params, door="celery", job_id=job_id, sent=True, read_job=runtime.store.get
    )
    try:
        return runtime.service().accept(request)
    except NotFound as exc:
        raise InvalidInput(exc.message, fields=exc.fields) from None


def reject(
    runtime: rt.Runtime, payload: dict[str, Any], job_id: str, exc: InvalidInput
) -> dict[str, Any]:
    """Fail the job of a malformed message with the fields it got wrong.

    Only a job this message made, or its own queued job (same owner: the API's message
    this worker cannot read, say after an upgrade), is failed: a bad id gets no record
    at all, and another owner's job is left as it was."""
    if not valid_job_id(job_id):
        return refused(job_id, exc)
    created = runtime.store.create(JobRecord.refused(job_id, payload.get("model")).to_dict())
    if not created:
        record = runtime.store.get(job_id) or {}
        owner = payload.get("owner") or None
        if record.get("status") != "queued" or record.get("owner") != owner:
            return refused(job_id, exc)
    return fail(runtime, job_id, exc) or runtime.store.get(job_id) or {"id": job_id}


TAKEN = Conflict(
    "job_id belongs to another job; that job was not touched",
    fields={"job_id": ["taken by another job"]},
)


def refused(job_id: str, exc: KilnError) -> dict[str, Any]:
    """The result of a message that is answered without writing any record."""
    return {"id": job_id, "status": "failed", "error": exc.to_dict()}


def claim(runtime: rt.Runtime, job_id: str, record: dict[str, Any]) -> None:
    """Raise ``RunningElsewhere`` while another live worker, or this one, runs the job.

    A second message for a running job comes from the broker (on Redis, a healthy job
    that outran the visibility timeout) or from the reaper (a worker that only looked
    dead); the job runs once, on the worker that has it.
    """
    owner = record.get("worker")
    if (
        record.get("status") in LIVE
        and owner
        and owner != runtime.hostname
        and patiently(
            runtime,
            job_id,
            "check the job's worker",
            lambda: runtime.store.worker_alive(
                model=str(record.get("model") or runtime.model.name), worker=owner
            ),
        )
    ):
        raise RunningElsewhere(owner)
    if runtime.take(job_id) is None:  # several copies may land on this worker: one runs
        raise RunningElsewhere(runtime.hostname)


def release(runtime: rt.Runtime, job_id: str) -> None:
    runtime.let_go(job_id)


def count_delivery(runtime: rt.Runtime, job_id: str, record: dict[str, Any]) -> int | None:
    """This delivery's attempt number, or None when the job was given up (or had ended)."""
    attempts = deliveries = int(record.get("attempts") or 0) + 1
    if deliveries <= runtime.settings.max_deliveries:
        return attempts
    fail(
        runtime,
        job_id,
        TooManyDeliveries(
            f"job was delivered {deliveries} times without finishing (its worker died "
            f"each time); giving up"
        ),
    )
    return None


def fail(runtime: rt.Runtime, job_id: str, exc: KilnError) -> dict[str, Any] | None:
    """End a job as failed (or canceled); None if it had already ended."""
    status = "canceled" if isinstance(exc, Canceled) else "failed"
    data: dict[str, Any] = {}
    state = runtime.job(job_id)
    if state is not None and state.step is not None:  # how far it ran, where a cancel found it
        data["steps_done"] = state.step
        if state.cancel_seen is not None:
            data["cancel_seen_at_step"] = state.cancel_seen
    record = end_job(
        runtime.store,
        runtime.celery,
        job_id,
        status,
        error=exc.to_dict(),
        data=data,
        webhook_lease_s=runtime.settings.webhook_lease_s,
    )
    if record is not None:
        log.info("job %s %s: %s", job_id, status, exc.message, extra={"job_id": job_id})
        metrics.job_finished(str(record.get("model") or runtime.model.name), status, record)
    return record


def succeed(
    runtime: rt.Runtime,
    job_id: str,
    params: dict[str, Any],
    result: Any,
    images: list[dict[str, Any]],
    upload_s: float,
) -> dict[str, Any] | None:
    batch = result.batches[-1] if result.batches else None
    record = end_job(
        runtime.store,
        runtime.celery,
        job_id,
        "succeeded",
        allowed_from=("running",),
        webhook_lease_s=runtime.settings.webhook_lease_s,
        data={"images": len(images)},
        images=images,
        progress={"step": params["steps"], "steps": params["steps"]},
        batch_id=batch.id if batch else None,
        batch_size=batch.size if batch else None,
        batches=[{"id": b.id, "size": b.size, "scheduler": b.scheduler} for b in result.batches],
        run_s=round(result.run_s, 4),
        upload_s=round(upload_s, 4),
    )
    if record is not None:
        metrics.job_finished(params["model"], "succeeded", record)
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
    return record
