"""The pure parts of ``bench.multiplex``: the trace, the fewest loads, the figures.

A trace is a list of jobs, each a model drawn from a Zipf law over the models (a
seeded RNG, so one seed is one trace) and a planned submit time at a fixed rate.
``belady_loads`` counts the loads Belady's offline rule needs to serve the jobs in
arrival order with room for ``capacity`` models: on a miss with a full device, evict
the resident model whose next use is farthest away (never used again: farthest of all).
Cold first loads count. A scheduler that reorders jobs (runs a resident model's later
jobs before another model's earlier one) can need fewer.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bench.common import percentile


@dataclass(frozen=True)
class Arrival:
    index: int  # position in the whole trace; also the job's seed
    model: str
    at_s: float  # planned submit time, seconds from the start of the run


def zipf_weights(n: int, s: float) -> list[float]:
    """P(rank k) ∝ 1 / k**s for k = 1..n, summing to 1."""
    raw = [1.0 / k**s for k in range(1, n + 1)]
    total = sum(raw)
    return [w / total for w in raw]


def make_trace(
    models: Sequence[str], *, jobs: int, rate: float, s: float, seed: int
) -> list[Arrival]:
    """``jobs`` arrivals ``1 / rate`` seconds apart; the first model of ``models`` is the
    most popular (Zipf rank 1), each job's model drawn independently."""
    rng = random.Random(seed)
    picks = rng.choices(list(models), weights=zipf_weights(len(models), s), k=jobs)
    return [Arrival(i, m, i / rate) for i, m in enumerate(picks)]


def burst(models: Iterable[str], *, each: int) -> list[Arrival]:
    """``each`` jobs of every model, all due at once (seeds from 10**6 on, apart from any
    trace's): a warm-up, so that no timed run pays a fresh process's first calls."""
    jobs = [m for m in models for _ in range(each)]
    return [Arrival(10**6 + i, m, 0.0) for i, m in enumerate(jobs)]


def shares(trace: Sequence[Arrival], *, rate: float) -> dict[str, list[Arrival]]:
    """Each model's jobs alone, in trace order and re-timed at the same ``rate`` from 0:
    what one single-model worker per model, one after another, is given."""
    out: dict[str, list[Arrival]] = {}
    for a in trace:
        share = out.setdefault(a.model, [])
        share.append(Arrival(a.index, a.model, len(share) / rate))
    return out


def belady_loads(sequence: Iterable[str], capacity: int) -> int:
    """The fewest loads that serve ``sequence`` in order with ``capacity`` resident
    models, cold loads included (Belady's farthest-next-use eviction)."""
    if capacity < 1:
        raise ValueError("capacity must be at least 1")
    seq = list(sequence)
    # next_use[i]: the next position after i that asks for seq[i] (len(seq): never)
    next_use = [len(seq)] * len(seq)
    last: dict[str, int] = {}
    for i in range(len(seq) - 1, -1, -1):
        next_use[i] = last.get(seq[i], len(seq))
        last[seq[i]] = i
    resident: dict[str, int] = {}  # model -> position of its next use
    loads = 0
    for i, model in enumerate(seq):
        if model not in resident:
            loads += 1
            if len(resident) >= capacity:
                del resident[max(resident, key=lambda m: resident[m])]
        resident[model] = next_use[i]
    return loads


@dataclass(frozen=True)
class Done:
    """One finished job: its model, planned submit time and end, in seconds from the
    start of its run; ``load_wait_s`` as its record says (0 when absent)."""

    model: str
    at_s: float
    end_s: float
    load_wait_s: float = 0.0

    @property
    def latency_s(self) -> float:
        return self.end_s - self.at_s


def span_s(done: Sequence[Done]) -> float:
    """First planned submit to last end."""
    return max(d.end_s for d in done) - min(d.at_s for d in done)


def per_model(done: Sequence[Done]) -> dict[str, dict[str, float]]:
    """Jobs, p50 and p99 latency (planned submit to end) for each model, by name."""
    by: dict[str, list[float]] = {}
    for d in done:
        by.setdefault(d.model, []).append(d.latency_s)
    return {
        m: {"jobs": len(lat), "p50_s": percentile(lat, 0.5), "p99_s": percentile(lat, 0.99)}
        for m, lat in sorted(by.items())
    }


@dataclass(frozen=True)
class Outcome:
    """One case's totals: the multiplexed worker against the single-model workers."""

    case: str
    fits: bool  # every model of the trace fits on the device at once
    multi_jobs_per_s: float
    single_jobs_per_s: float
    loads: int  # the multiplexed worker's, cold loads included
    optimum: int  # belady_loads of the trace with the case's room

    @property
    def throughput_ratio(self) -> float:
        return self.multi_jobs_per_s / self.single_jobs_per_s

    @property
    def loads_ratio(self) -> float:
        return self.loads / self.optimum

    def target(self) -> str:
        """The target this case is measured against, its value, and met or not: with
        the working set on the device, throughput ≥ 0.9× the single-model workers';
        without, loads ≤ 2× the optimum."""
        if self.fits:
            value, met, what = (
                self.throughput_ratio,
                self.throughput_ratio >= 0.9,
                "throughput ≥ 0.9×",
            )
        else:
            value, met, what = self.loads_ratio, self.loads_ratio <= 2.0, "loads ≤ 2× optimum"
        return f"{what}: {value:.3f} {'met' if met else 'not met'}"


def ratio_rows(outcomes: Sequence[Outcome]) -> list[list[object]]:
    """One row per case: throughput ratio, loads ratio, the case's target."""
    return [[o.case, o.throughput_ratio, o.loads_ratio, o.target()] for o in outcomes]
