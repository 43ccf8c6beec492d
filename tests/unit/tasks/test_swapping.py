"""The swap policy of a worker serving several models: by demand, never per job."""

from __future__ import annotations

from tasks.worker.swapping import Demand, Swap, plan

WAIT = 10.0


def test_a_model_nobody_holds_is_taken_in_when_there_is_room() -> None:
    demand = {"a": Demand(waiting=3), "b": Demand(waiting=1, oldest_s=0.1)}
    assert plan(["a"], demand, capacity=2, max_swap_wait_s=WAIT) == Swap(
        "b", None, "nobody holds it"
    )


def test_an_idle_model_makes_room_for_one_with_jobs_waiting() -> None:
    demand = {"a": Demand(), "b": Demand(waiting=2, oldest_s=0.1)}
    swap = plan(["a"], demand, capacity=1, max_swap_wait_s=WAIT)
    assert swap is not None and (swap.take, swap.drop) == ("b", "a")


def test_the_least_recently_chosen_idle_model_goes_first() -> None:
    demand = {"a": Demand(), "b": Demand(), "c": Demand(waiting=1)}
    swap = plan(["b", "a"], demand, capacity=2, max_swap_wait_s=WAIT)
    assert swap is not None and swap.drop == "b"


def test_a_model_whose_queue_has_jobs_stays_until_another_waited_max_swap_wait_s() -> None:
    held = ["a"]
    busy = {"a": Demand(waiting=5, oldest_s=1.0)}
    assert (
        plan(
            held,
            {**busy, "b": Demand(waiting=1, oldest_s=WAIT - 0.1)},
            capacity=1,
            max_swap_wait_s=WAIT,
        )
        is None
    )
    swap = plan(
        held, {**busy, "b": Demand(waiting=1, oldest_s=WAIT)}, capacity=1, max_swap_wait_s=WAIT
    )
    assert swap is not None and (swap.take, swap.drop) == ("b", "a")


def test_when_every_held_model_is_busy_the_one_with_the_youngest_oldest_job_goes() -> None:
    demand = {
        "a": Demand(waiting=2, oldest_s=8.0),
        "b": Demand(waiting=2, oldest_s=1.0),
        "c": Demand(waiting=1, oldest_s=WAIT + 1),
    }
    swap = plan(["a", "b"], demand, capacity=2, max_swap_wait_s=WAIT)
    assert swap is not None and (swap.take, swap.drop) == ("c", "b")


def test_a_model_another_worker_holds_is_left_to_it_while_this_one_has_work() -> None:
    demand = {"a": Demand(waiting=1), "b": Demand(waiting=9, oldest_s=WAIT * 3, holders=1)}
    assert plan(["a"], demand, capacity=1, max_swap_wait_s=WAIT) is None


def test_an_idle_worker_helps_with_a_held_model_only_once_its_jobs_waited_long() -> None:
    held, idle = ["a"], {"a": Demand()}
    short = {**idle, "b": Demand(waiting=4, oldest_s=1.0, holders=1)}
    assert plan(held, short, capacity=1, max_swap_wait_s=WAIT) is None  # no ping-pong
    long = {**idle, "b": Demand(waiting=4, oldest_s=WAIT, holders=1)}
    swap = plan(held, long, capacity=1, max_swap_wait_s=WAIT)
    assert swap is not None and (swap.take, swap.drop) == ("b", "a")


def test_the_oldest_waiting_model_is_taken_in_first() -> None:
    demand = {
        "a": Demand(),
        "b": Demand(waiting=1, oldest_s=2.0),
        "c": Demand(waiting=1, oldest_s=5.0),
    }
    swap = plan(["a"], demand, capacity=1, max_swap_wait_s=WAIT)
    assert swap is not None and swap.take == "c"


def test_a_model_that_cannot_load_needs_no_room() -> None:
    demand = {"a": Demand(waiting=3, oldest_s=1.0), "bad": Demand(waiting=1, oldest_s=0.1)}
    swap = plan(["a"], demand, capacity=1, max_swap_wait_s=WAIT, broken=frozenset({"bad"}))
    assert swap is not None and (swap.take, swap.drop) == ("bad", None)


def test_nothing_waiting_changes_nothing() -> None:
    assert plan(["a"], {"a": Demand(), "b": Demand()}, capacity=1, max_swap_wait_s=WAIT) is None
