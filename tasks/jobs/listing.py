"""One API key's jobs, newest first, a page at a time (what ``GET /v1/jobs`` shows).

    page = list_jobs(store, "alice", status="succeeded", limit=20)
    more = list_jobs(store, "alice", status="succeeded", limit=20, after=page.jobs[-1]["id"])

Pages follow the key's index (``kiln:owned:<owner>``), so jobs submitted while a caller
pages never shift or repeat what it sees; ``after`` is the page's ``cursor`` (the last
index row it read). A page reads at most ``MAX_ROWS`` rows of the index, whatever the
filter: a filter that matches little gives short (even empty) pages with ``has_more``
and a cursor, never a scan of the whole index. Jobs whose records have expired are
dropped from the index on the way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from config.errors import InvalidInput
from tasks.jobs import bookkeeping as bk
from tasks.jobs.store import JobStore

CHUNK = 100
MAX_ROWS = 500  # index rows one page reads at most


@dataclass
class Page:
    jobs: list[dict[str, Any]] = field(default_factory=list)
    has_more: bool = False
    cursor: str | None = None  # pass as ``after`` for the next page (while has_more)
    rows_read: int = 0


def list_jobs(
    store: JobStore,
    owner: str | None,
    *,
    status: str | None = None,
    model: str | None = None,
    limit: int = 20,
    after: str | None = None,
) -> Page:
    """Up to ``limit`` of ``owner``'s records (``status`` and ``model`` when given), newest
    first, after job ``after``; ``has_more`` says whether another page follows."""
    r = store.redis
    up_to = None
    if after is not None:
        up_to = bk.owned_score(r, owner, after)
        if up_to is None:
            raise InvalidInput(
                f"no job {after!r} among this key's jobs to list after",
                fields={"after": ["not one of this key's jobs (or it expired)"]},
            )
    found: list[dict[str, Any]] = []
    gone: list[str] = []
    offset = read = 0
    last: str | None = None  # the last row read
    more = False
    while read < MAX_ROWS and not more:
        rows = bk.owned_chunk(r, owner, up_to=up_to, offset=offset, count=CHUNK)
        if not rows:
            break
        offset += len(rows)
        # Equal submit times come in reverse id order: skip those at or before ``after``.
        ids = [m for m, s in rows if not (after is not None and s == up_to and m >= after)]
        if len(ids) > MAX_ROWS - read:  # a row past the bound: there is more
            ids, more = ids[: MAX_ROWS - read], True
        with r.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(bk.job_key(job_id))
            raws = pipe.execute() if ids else []
        for job_id, raw in zip(ids, raws, strict=True):
            if len(found) == limit:  # a row beyond a full page: there is more
                more = True
                break
            read, last = read + 1, job_id
            if not raw:
                gone.append(job_id)
                continue
            record = {k: json.loads(v) for k, v in raw.items()}
            if (status is None or record.get("status") == status) and (
                model is None or record.get("model") == model
            ):
                found.append(record)
    if read >= MAX_ROWS and not more:  # stopped at the bound: is there a row after it?
        more = bool(bk.owned_chunk(r, owner, up_to=up_to, offset=offset, count=1))
    bk.forget_owned(r, owner, gone)
    return Page(jobs=found, has_more=more, cursor=last if more else None, rows_read=read)
