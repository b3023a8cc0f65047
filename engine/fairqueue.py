"""Round-robin-by-user waiting line, shared by the in-process and the Redis backends.

One user queueing five images must never hold back another user's first: each turn serves the
user with the fewest turns so far, and among equals the one who has gone longest without one.
Plain Python, no locking: the caller owns synchronisation (the local backend holds a lock, the
Redis dispatcher runs on one event loop).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclasses.dataclass
class _Line(Generic[T]):
    jobs: deque[tuple[str, T]]
    round: int  # turns taken in this busy period (newcomers start at the current round)
    last_served: int  # -1 = not served yet: goes before those who were
    arrival: int

    def key(self) -> tuple[int, int, int]:
        return (self.round, self.last_served, self.arrival)


class FairQueue(Generic[T]):
    """Next job = first job of the user with the fewest turns, then the longest without one."""

    def __init__(self) -> None:
        self._lines: dict[int, _Line[T]] = {}
        self._owner: dict[str, int] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._owner)

    def __contains__(self, key: object) -> bool:
        return key in self._owner

    def push(self, user_id: int, key: str, item: T) -> None:
        if key in self._owner:
            raise KeyError(f"job {key} is already queued")
        line = self._lines.get(user_id)
        if line is None:
            # A newcomer joins the current round: no head start, and no waiting behind everyone
            # else's backlog either.
            current = min((other.round for other in self._lines.values()), default=0)
            line = _Line(deque(), current, -1, next(self._seq))
            self._lines[user_id] = line
        line.jobs.append((key, item))
        self._owner[key] = user_id

    def pop(self) -> tuple[str, T] | None:
        if not self._lines:
            return None
        user_id = min(self._lines, key=lambda u: self._lines[u].key())
        line = self._lines[user_id]
        key, item = line.jobs.popleft()
        del self._owner[key]
        line.round += 1
        line.last_served = next(self._seq)
        if not line.jobs:
            del self._lines[user_id]
        return key, item

    def remove(self, key: str) -> T | None:
        user_id = self._owner.pop(key, None)
        if user_id is None:
            return None
        jobs = self._lines[user_id].jobs
        index = next(i for i, (k, _) in enumerate(jobs) if k == key)
        item = jobs[index][1]
        del jobs[index]
        if not jobs:
            del self._lines[user_id]
        return item

    def get(self, key: str) -> T | None:
        user_id = self._owner.get(key)
        if user_id is None:
            return None
        return next(item for k, item in self._lines[user_id].jobs if k == key)

    def count_for(self, user_id: int) -> int:
        line = self._lines.get(user_id)
        return len(line.jobs) if line else 0

    def order(self) -> Iterator[str]:
        """Job keys in the order ``pop`` would return them if nothing else arrived."""
        lines = {
            u: _Line(deque(line.jobs), line.round, line.last_served, line.arrival)
            for u, line in self._lines.items()
        }
        tick = itertools.count(next(self._seq))
        while lines:
            user_id = min(lines, key=lambda u: lines[u].key())
            line = lines[user_id]
            yield line.jobs.popleft()[0]
            line.round += 1
            line.last_served = next(tick)
            if not line.jobs:
                del lines[user_id]

    def position(self, key: str) -> int | None:
        """1-based place among the waiting jobs, or None when the job is not waiting."""
        if key not in self._owner:
            return None
        return next(i for i, k in enumerate(self.order(), start=1) if k == key)
