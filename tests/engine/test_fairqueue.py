from __future__ import annotations

import itertools

import pytest

from engine.fairqueue import FairQueue


def drain(queue: FairQueue[str]) -> list[str]:
    out = []
    while (item := queue.pop()) is not None:
        out.append(item[0])
    return out


def test_one_turn_per_user_in_arrival_order() -> None:
    queue: FairQueue[str] = FairQueue()
    for n in range(3):
        queue.push(1, f"a{n}", "x")
    queue.push(2, "b0", "x")
    queue.push(3, "c0", "x")
    queue.push(2, "b1", "x")
    assert list(queue.order()) == ["a0", "b0", "c0", "a1", "b1", "a2"]
    assert [queue.position(k) for k in ("a0", "b0", "a2")] == [1, 2, 6]
    assert drain(queue) == ["a0", "b0", "c0", "a1", "b1", "a2"]
    assert len(queue) == 0 and queue.pop() is None


def test_a_user_who_just_had_a_turn_goes_to_the_back() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.push(1, "a0", "x")
    queue.push(1, "a1", "x")
    assert queue.pop() == ("a0", "x")
    queue.push(2, "b0", "x")  # arrives after Alice's first turn, still goes before a1
    assert drain(queue) == ["b0", "a1"]


def test_remove_get_and_counts() -> None:
    queue: FairQueue[int] = FairQueue()
    queue.push(1, "a0", 10)
    queue.push(1, "a1", 11)
    queue.push(2, "b0", 20)
    assert queue.count_for(1) == 2 and "a1" in queue and queue.get("a1") == 11
    assert queue.remove("a0") == 10
    assert queue.remove("a0") is None and queue.position("a0") is None
    assert queue.remove("b0") == 20 and queue.count_for(2) == 0
    assert drain(queue) == ["a1"]  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        queue.push(3, "c0", 1)
        queue.push(3, "c0", 1)


# ------------------------------------------------------------------- grouping by model
def serve(
    queue: FairQueue[str], arrivals: list[tuple[int, str, str]], *, group: bool
) -> tuple[list[str], dict[str, int]]:
    """Run a GPU over ``arrivals`` (user, key, model): two jobs arrive per job served. Returns
    the models in the order they ran and, for each job, how many jobs were served ahead of it
    although the fair order put it first (counted from the outside, not from the queue)."""
    pending = list(arrivals)
    ran: list[str] = []
    jumped: dict[str, int] = {}
    current: str | None = None
    while pending or len(queue):
        for user, key, model in pending[:2]:
            queue.push(user, key, model, group=model)
        del pending[:2]
        order = list(queue.order())
        item = queue.pop(prefer=current) if group else queue.pop()
        assert item is not None
        key, model = item
        for ahead in order[: order.index(key)]:
            jumped[ahead] = jumped.get(ahead, 0) + 1
        ran.append(model)
        current = model
    return ran, jumped


def swaps(ran: list[str]) -> int:
    return sum(1 for a, b in itertools.pairwise(ran) if a != b)


def test_grouping_by_model_swaps_far_less_than_fifo_within_the_bound() -> None:
    # Four members, text-to-image and edits interleaved, the worst case for a swapping GPU.
    arrivals = [(n % 4, f"j{n}", "edit" if n % 2 else "generate") for n in range(48)]
    fifo, _ = serve(FairQueue(), arrivals, group=False)
    grouped, jumped = serve(FairQueue(), arrivals, group=True)

    assert sorted(fifo) == sorted(grouped)  # every job ran once
    assert swaps(fifo) == 47  # FIFO swaps before every job but the first
    assert swaps(grouped) * 4 <= swaps(fifo)
    assert max(jumped.values()) <= 3  # no job waited behind more than K=3 jumpers
    assert max(jumped.values()) == 3  # and the bound is what stopped the grouping


def test_a_jumped_job_goes_next_after_three_jumps() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.push(1, "edit", "e", group="edit")
    for n in range(5):
        queue.push(2 + n, f"g{n}", "g", group="generate")
    served = [queue.pop(prefer="generate") for _ in range(4)]
    assert [item[0] for item in served if item] == ["g0", "g1", "g2", "edit"]
    assert queue.jumped("g3") == 0


def test_only_skips_jobs_that_cannot_run_without_counting_a_jump() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.push(1, "e0", "e", group="edit")
    queue.push(2, "g0", "g", group="generate")
    assert queue.pop(only={"generate"}) == ("g0", "g")
    assert queue.jumped("e0") == 0
    assert queue.pop(only={"generate"}) is None
    assert queue.pop(only={"edit", "generate"}) == ("e0", "e")
