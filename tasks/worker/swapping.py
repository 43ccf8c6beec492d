"""Which models a worker that serves several consumes now: swap by demand, never per job.

A worker started with ``--models a,b,c`` consumes the queues of the models it holds.
Every ``TICK_S`` it reads fleet state from the job store (per model: jobs waiting, the
oldest one's submit time, the other ready workers that hold it) and, at most once a
tick, changes the set with Celery's own consumer control (``add_task_queue`` /
``cancel_task_queue`` on the worker's consumer):

- it takes in a model that has jobs waiting when no other ready worker holds it, or when
  its own models have nothing waiting and that model's oldest job has waited
  ``max_swap_wait_s`` (or there is room to spare);
- to make room it gives up a model with nothing waiting (least recently chosen first);
  a model whose queue has jobs is given up only once the newcomer's oldest job has
  waited ``max_swap_wait_s``, so no model waits for ever and none ping-pongs;
- a claim in the job store (``bookkeeping.take_model``) lets one worker take a model in
  at a time, so two workers that share models settle on different ones.

The engine loads a model when its first batch comes, evicting the least recently used
model the worker no longer wants (``pipelines.resident``); messages it had already
taken from a queue it gave up still run here.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from tasks.jobs import bookkeeping as bk
from tasks.messaging.names import queue_for
from tasks.worker.runtime import HEARTBEAT_TTL_S

log = logging.getLogger("kiln.swapping")
TICK_S = 0.5
# The claim only has to outlive the race of two workers' ticks: the taker beats ready
# for the model at once, and from then on the others see it as held. A taker that dies
# frees the model as its heartbeat expires.
CLAIM_S = HEARTBEAT_TTL_S


@dataclass(frozen=True)
class Demand:
    waiting: int = 0  # jobs submitted and not yet on a device
    oldest_s: float = 0.0  # how long the oldest of them has waited
    holders: int = 0  # other ready workers holding the model


@dataclass(frozen=True)
class Swap:
    take: str
    drop: str | None = None
    why: str = ""


def plan(
    held: list[str],
    demand: dict[str, Demand],
    *,
    capacity: int,
    max_swap_wait_s: float,
    broken: frozenset[str] = frozenset(),
) -> Swap | None:
    """The one change worth making now, or None. ``held``: the models consumed now, the
    least recently chosen first; ``broken``: models that cannot load (taking one in fails
    its jobs at once and needs no room)."""
    own_idle = all(demand.get(h, Demand()).waiting == 0 for h in held)
    room = len([h for h in held if h not in broken]) < capacity
    candidates = [m for m, d in demand.items() if m not in held and d.waiting > 0]
    for model in sorted(candidates, key=lambda m: -demand[m].oldest_s):
        d = demand[model]
        long = d.oldest_s >= max_swap_wait_s
        if d.holders and not (own_idle and (long or room)):
            continue  # another worker holds it and this one has work of its own
        if model in broken or room:
            return Swap(model, None, "nobody holds it" if not d.holders else "idle")
        idle = [h for h in held if demand.get(h, Demand()).waiting == 0]
        if idle:
            return Swap(model, idle[0], "its own models have nothing waiting")
        if long:  # every held model has work: the one whose oldest job is youngest goes
            drop = min(held, key=lambda h: demand.get(h, Demand()).oldest_s)
            return Swap(model, drop, f"its oldest job waited {d.oldest_s:.1f}s")
    return None


class Swapper:
    """The thread that applies :func:`plan` to a running worker."""

    def __init__(self, runtime: Any, *, tick_s: float = TICK_S) -> None:
        self.runtime = runtime
        self.tick_s = tick_s
        self._stop = threading.Event()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="kiln-swapper", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.tick()
            except Exception as exc:  # a job-store blip: look again next tick
                log.warning("swapper: %s", type(exc).__name__)

    def demand(self) -> dict[str, Demand]:
        rt, now = self.runtime, time.time()
        out = {}
        for model, (count, oldest, names) in bk.fleet_demand(
            rt.store.redis, list(rt.served)
        ).items():
            out[model] = Demand(
                waiting=count,
                oldest_s=max(0.0, now - oldest) if oldest is not None else 0.0,
                holders=len([n for n in names if n != rt.hostname]),
            )
        return out

    def tick(self) -> Swap | None:
        rt = self.runtime
        if rt.consumer is None or rt.resident is None:
            return None
        resident = rt.resident
        demand = self.demand()
        for model in [m for m in rt.wanted if m in resident.failed and len(rt.wanted) > 1]:
            if demand[model].waiting == 0:  # its jobs have failed: stop taking its queue
                self._give_up(model)
        swap = plan(
            list(rt.wanted),
            demand,
            capacity=resident.capacity(),
            max_swap_wait_s=rt.settings.max_swap_wait_s,
            broken=frozenset(resident.failed),
        )
        if swap is None or not bk.take_model(rt.store.redis, swap.take, rt.hostname, CLAIM_S):
            return None
        self.apply(swap)
        return swap

    def apply(self, swap: Swap) -> None:
        rt = self.runtime
        if swap.drop is not None:
            self._give_up(swap.drop)
        self._want([*rt.wanted, swap.take])
        rt.consumer.add_task_queue(queue_for(swap.take))
        rt.beat()  # the fleet sees the change now, not at the next heartbeat
        log.info(
            "takes in %s%s: %s",
            swap.take,
            f" for {swap.drop}" if swap.drop else "",
            swap.why,
            extra={"model": swap.take, "worker": rt.hostname},
        )

    def _give_up(self, model: str) -> None:
        """Stop consuming ``model``'s queue and free this worker's claim on it."""
        rt = self.runtime
        rt.consumer.cancel_task_queue(queue_for(model))
        bk.give_up_model(rt.store.redis, model, rt.hostname)
        self._want([m for m in rt.wanted if m != model])

    def _want(self, models: list[str]) -> None:
        """The models it consumes now: the resident set evicts the others first."""
        self.runtime.wanted = models
        self.runtime.resident.wanted = frozenset(models)
