"""Pure parts of a job's status: queue ETA, running ETA from step timings, and the wait
for a job's batch to reach the device."""

from __future__ import annotations

import threading
import time

import pytest

from config.errors import QueueWaitExceeded
from tasks.jobs import bookkeeping as bk
from tasks.worker.time_limits import wait_started


@pytest.mark.parametrize(
    ("position", "images", "workers", "rate", "expected"),
    [
        (1, 1, 1, 2.0, 2.0),  # next, one image: its own time
        (5, 1, 1, 2.0, 10.0),  # four waiting ahead (in the broker or in a worker)
        (5, 4, 1, 0.5, 4.0),  # its own four images count
        (5, 1, 2, 2.0, 5.0),  # two ready workers share the line
        (3, 1, 0, 1.0, 3.0),  # no ready worker yet: priced as one
        (1, 1, 8, 2.0, 2.0),  # never less than one image's time
    ],
)
def test_queued_eta_counts_every_job_ahead_and_its_own_images(
    position: int, images: int, workers: int, rate: float, expected: float
) -> None:
    got = bk.eta_s(position=position, images=images, workers=workers, s_per_image=rate)
    assert got == pytest.approx(expected)


def test_queued_eta_grows_with_the_position() -> None:
    etas = [bk.eta_s(position=p, images=1, workers=1, s_per_image=0.3) for p in range(1, 20)]
    assert etas == sorted(etas) and len(set(etas)) == len(etas)


@pytest.mark.parametrize(
    ("step", "steps", "elapsed", "fallback", "expected"),
    [
        (2, 10, 1.0, 9.0, 4.0),  # 0.5 s a step, 8 steps left
        (10, 10, 5.0, 9.0, 0.0),  # all steps done
        (1, 4, 0.25, 9.0, 0.75),
        (0, 10, 3.0, 9.0, 9.0),  # no step timing yet: the fallback
        (3, 10, 0.0, 9.0, 9.0),  # no time measured: the fallback
        (12, 10, 1.0, 9.0, 0.0),  # never negative
    ],
)
def test_running_eta_comes_from_the_job_s_own_step_timings(
    step: int, steps: int, elapsed: float, fallback: float, expected: float
) -> None:
    got = bk.running_eta_s(step=step, steps=steps, elapsed_s=elapsed, fallback_s=fallback)
    assert got == pytest.approx(expected)


def test_waiting_for_the_device_returns_once_woken() -> None:
    woken, cancel = threading.Event(), threading.Event()
    threading.Timer(0.05, woken.set).start()
    wait_started(woken, cancel, queue_wait_s=30)
    assert not cancel.is_set()
    wait_started(woken, cancel, queue_wait_s=0)  # no limit: returns as soon as woken


def test_a_job_that_never_reaches_the_device_fails_with_the_queue_wait_limit() -> None:
    woken, cancel = threading.Event(), threading.Event()
    t0 = time.monotonic()
    with pytest.raises(QueueWaitExceeded, match=r"KILN_QUEUE_WAIT_LIMIT_S=0\.1"):
        wait_started(woken, cancel, queue_wait_s=0.1)
    assert cancel.is_set()  # the engine drops it before it runs
    assert time.monotonic() - t0 >= 0.1
