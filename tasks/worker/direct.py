"""Jobs sent straight to ``kiln.generate`` by another service, not through the API.

Their worker takes them in through the job service's ``accept``, as the API takes its
own (``tasks.worker.generate``): each image input read once (a URL through the egress
client), checked and sized by the model's rules, and stored under ``inputs/<job_id>/``.
A message delivered again, or sent twice, is then read as its first delivery was, so
that it is known for the same job and not for another one reusing its id.
"""

from __future__ import annotations

from typing import Any

from tasks.jobs.inputs import as_recorded


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
