from __future__ import annotations

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
