"""Jobs sent straight to ``kiln.generate`` by another service, not through the API.

Their worker does what the API does for its own jobs before the record is made: it
reads each image input once (a URL through the egress client), checks and sizes it by
the model's rules, and stores it under ``inputs/<job_id>/``. A message delivered again,
or sent twice, is then read as its first delivery was, so that it is known for the same
job and not for another one reusing its id.
"""

from __future__ import annotations

from typing import Any

from config.errors import InvalidInput, NotFound
from tasks.jobs.inputs import Inputs, as_recorded
from tasks.jobs.schema import check_image_size
from tasks.worker import runtime as rt
from tasks.worker.outages import patiently


def as_first_delivered(
    params: dict[str, Any], record: dict[str, Any], payload: dict[str, Any]
) -> dict[str, Any]:
    """A message delivered again (or sent twice) reads as its first delivery did: the
    seeds drawn for it when it named none, and its image inputs and size as stored
    (``tasks.jobs.inputs.as_recorded``). What it did name is compared as it is."""
    out = as_recorded(params, record)
    seeds = list(record.get("seeds") or [])
    if payload.get("seed") is None and not payload.get("seeds") and len(seeds) == out["n"]:
        out["seeds"], out["seed"] = seeds, seeds[0]
    return out


def take_inputs(runtime: rt.Runtime, job_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """A Celery-door job's image inputs, read once (a URL fetched through the egress
    client), checked, sized and stored under ``inputs/<job_id>/`` as the API does."""
    if params.get("image") is None:
        return params
    inputs = Inputs.for_settings(runtime.storage, runtime.settings, read_job=runtime.store.get)
    try:
        checked = patiently(
            runtime, job_id, "read the image inputs", lambda: inputs.check(params, runtime.model)
        )
    except NotFound as exc:  # a job named as the input: a bad input of this job's
        raise InvalidInput(exc.message, fields=exc.fields) from None
    checked = check_image_size(params, checked, runtime.registry)
    return patiently(
        runtime,
        job_id,
        "store the image inputs",
        lambda: inputs.store(job_id, checked, refs=True),
    )
