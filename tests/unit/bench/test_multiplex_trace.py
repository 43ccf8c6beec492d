"""The multiplex bench's pure parts: one seed is one trace, the optimum is the fewest
loads, and the figures it prints say which target each case is held to."""

from __future__ import annotations

import functools
import itertools
import random
from collections import Counter

import pytest

from bench.common import percentile, table
from bench.multiplex_trace import (
    Arrival,
    Done,
    Outcome,
    belady_loads,
    burst,
    make_trace,
    per_model,
    ratio_rows,
    shares,
    span_s,
    zipf_weights,
)

MODELS = ("a", "b", "c", "d")


def fewest_loads(seq: tuple[str, ...], capacity: int) -> int:
    """Every eviction choice tried: the true fewest loads, for short sequences."""

    @functools.cache
    def best(i: int, resident: frozenset[str]) -> int:
        if i == len(seq):
            return 0
        if seq[i] in resident:
            return best(i + 1, resident)
        if len(resident) < capacity:
            return 1 + best(i + 1, resident | {seq[i]})
        return 1 + min(best(i + 1, (resident - {out}) | {seq[i]}) for out in resident)

    return best(0, frozenset())


def test_zipf_weights_fall_as_a_power_of_the_rank_and_sum_to_one() -> None:
    w = zipf_weights(4, 1.1)
    assert sum(w) == pytest.approx(1.0)
    assert w[0] / w[1] == pytest.approx(2**1.1)
    assert w[0] / w[3] == pytest.approx(4**1.1)


def test_one_seed_is_one_trace_at_a_fixed_rate_with_the_first_model_most_popular() -> None:
    trace = make_trace(MODELS, jobs=2000, rate=8.0, s=1.1, seed=3)
    assert trace == make_trace(MODELS, jobs=2000, rate=8.0, s=1.1, seed=3)
    assert trace != make_trace(MODELS, jobs=2000, rate=8.0, s=1.1, seed=4)
    assert [a.index for a in trace] == list(range(2000))
    assert trace[1].at_s == 0.125 and trace[-1].at_s == pytest.approx(1999 / 8)
    counts = Counter(a.model for a in trace)
    assert counts["a"] > counts["b"] > counts["c"] > counts["d"] > 0


def test_a_models_share_keeps_its_jobs_in_order_retimed_at_the_same_rate() -> None:
    trace = [Arrival(0, "a", 0.0), Arrival(1, "b", 0.5), Arrival(2, "a", 1.0), Arrival(3, "a", 1.5)]
    got = shares(trace, rate=2.0)
    assert got == {
        "a": [Arrival(0, "a", 0.0), Arrival(2, "a", 0.5), Arrival(3, "a", 1.0)],
        "b": [Arrival(1, "b", 0.0)],
    }


def test_a_warm_up_burst_is_due_at_once_with_seeds_apart_from_the_trace() -> None:
    jobs = burst(["a", "b"], each=2)
    assert [(a.model, a.at_s) for a in jobs] == [("a", 0.0), ("a", 0.0), ("b", 0.0), ("b", 0.0)]
    assert min(a.index for a in jobs) >= 10**6


def test_belady_gives_the_textbook_count_cold_loads_included() -> None:
    # The reference string of the classic page-replacement example: 9 faults with 3 frames.
    seq = [str(p) for p in (7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1)]
    assert belady_loads(seq, 3) == 9


def test_with_room_for_all_each_model_loads_once_and_with_room_for_one_at_every_change() -> None:
    seq = list("abacabddcab")
    assert belady_loads(seq, 4) == 4
    assert belady_loads(seq, 1) == 1 + sum(x != y for x, y in itertools.pairwise(seq))
    assert belady_loads([], 2) == 0
    with pytest.raises(ValueError):
        belady_loads(seq, 0)


@pytest.mark.parametrize("capacity", [1, 2, 3])
def test_belady_is_the_fewest_any_eviction_order_reaches(capacity: int) -> None:
    rng = random.Random(7)
    for _ in range(60):
        seq = tuple(rng.choices(MODELS, weights=zipf_weights(4, 1.1), k=rng.randint(1, 14)))
        assert belady_loads(seq, capacity) == fewest_loads(seq, capacity), seq


def test_per_model_latency_runs_from_the_planned_submit_and_the_span_covers_all() -> None:
    done = [Done("a", 0.0, 1.0), Done("b", 0.5, 3.5, 2.0), Done("a", 1.0, 1.5), Done("a", 2, 4)]
    assert per_model(done) == {
        "a": {"jobs": 3, "p50_s": 1.0, "p99_s": 2.0},
        "b": {"jobs": 1, "p50_s": 3.0, "p99_s": 3.0},
    }
    assert span_s(done) == 4.0


def test_percentile_picks_a_value_of_the_sample() -> None:
    values = list(range(100, 0, -1))  # any order
    assert percentile(values, 0.5) in (50, 51)
    assert percentile(values, 0.99) == 99
    assert percentile([4.0], 0.99) == 4.0


def test_each_case_is_held_to_its_own_target() -> None:
    fits = Outcome("all fit", True, 9.0, 10.0, 4, 4)
    tight = Outcome("2 of 4", False, 5.0, 10.0, 30, 12)
    assert fits.target() == "throughput ≥ 0.9×: 0.900 met"
    assert tight.target() == "loads ≤ 2× optimum: 2.500 not met"
    rows = ratio_rows([fits, tight])
    assert rows[1][:3] == ["2 of 4", 0.5, 2.5]


def test_the_table_lines_up_its_columns_under_a_rule() -> None:
    out = table([["2 of 4 fit", 0.91234, 12], ["all", 123.456, 4]], ["case", "x", "loads"])
    lines = out.splitlines()
    assert lines[0] == "case        x      loads"
    assert lines[1] == "----------  -----  -----"
    assert lines[2] == "2 of 4 fit  0.912  12   "
    assert lines[3] == "all         123.5  4    "
