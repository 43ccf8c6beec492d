"""Hold a worker's device with a job that runs until it is canceled, so that jobs sent
meanwhile wait in the worker together (the batching tests).

The blocker costs only the time the test needs: it is canceled once every job sent
under it has been received by the worker, not left to run its steps out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from harness.http import KilnHTTP
from harness.stack import Stack, wait_for


@contextlib.contextmanager
def device_held(
    api: KilnHTTP, stack: Stack, *, model: str, size: int, steps: int
) -> Iterator[list[str]]:
    """Yield a list for the ids of the jobs sent under the hold; on leaving, wait until
    the worker has received each of them, then cancel the blocker (still running: if it
    ended first, the jobs did not wait together and the test would prove nothing)."""
    from tasks.jobs.store import JobStore

    blocker = api.submit(
        prompt="hold the device", model=model, width=size, height=size, steps=steps, seed=1
    )
    api.wait_for_status(blocker["id"], "running", timeout=120)
    sent: list[str] = []
    yield sent
    store = JobStore(stack.env["KILN_REDIS_URL"])
    wait_for(
        lambda: all(store.field(i, "worker") for i in sent),
        timeout=120,
        what="the jobs received by the worker",
    )
    was = api.delete(f"/v1/jobs/{blocker['id']}").json().get("was")
    assert was == "running", f"the blocker ended ({was}) before the jobs were received"
