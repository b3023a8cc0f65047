"""Round-robin-by-user waiting line, shared by the in-process and the Redis backends.

One user queueing five images must never hold back another user's first: each turn serves the
user with the fewest turns so far, and among equals the one who has gone longest without one.
Plain Python, no locking: the caller owns synchronisation (the local backend holds a lock, the
Redis dispatcher runs on one event loop).

Each job may carry a *group*: the model it needs ("generate" or "edit"). Where the two
transformers cannot both stay on the GPU, every change of group costs a swap of a 41 GB
transformer, so ``pop(prefer=group)`` serves a later job of the group already on the GPU ahead
of older jobs of the other one, within a bound: a job is jumped at most ``max_jumps`` times
(``MAX_JUMPS``, 3), then it goes next whatever it costs. ``pop(only=...)`` serves the first job
of the given groups (the Redis dispatcher: an edit job waits while no edit-capable worker is
free, without holding back the text-to-image jobs behind it; a job that could not have run is
not counted as jumped).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from collections.abc import Collection, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

# How many later jobs of the model on the GPU may be served ahead of an older job of the other
# model before that job goes next.
MAX_JUMPS = 3


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

    def __init__(self, max_jumps: int = MAX_JUMPS) -> None:
        self.max_jumps = max_jumps
        self._lines: dict[int, _Line[T]] = {}
        self._owner: dict[str, int] = {}
        self._group: dict[str, str] = {}
        self._jumped: dict[str, int] = {}  # key -> jobs of the other group served ahead of it
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._owner)

    def __contains__(self, key: object) -> bool:
        return key in self._owner

    def push(self, user_id: int, key: str, item: T, group: str = "") -> None:
        """Queue ``item`` under ``key``; ``group`` is the model it needs (see the module doc)."""
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
        self._group[key] = group
        self._jumped[key] = 0

    def group_of(self, key: str) -> str | None:
        return self._group.get(key)

    def jumped(self, key: str) -> int:
        """How many jobs of another group were served ahead of this waiting job so far."""
        return self._jumped.get(key, 0)

    def pop(
        self, *, prefer: str | None = None, only: Collection[str] | None = None
    ) -> tuple[str, T] | None:
        """The next job in fair order, with two optional twists (see the module doc):
        ``prefer`` a group (at most ``max_jumps`` jumps over any one job of another group),
        ``only`` these groups (None when no waiting job is of one of them)."""
        if not self._lines:
            return None
        if prefer is None and only is None:
            user_id = min(self._lines, key=lambda u: self._lines[u].key())
            return self._take(user_id, self._lines[user_id].jobs[0][0])
        head: str | None = None
        chosen: str | None = None
        passed: list[str] = []
        for key in self.order():
            group = self._group[key]
            if only is not None and group not in only:
                continue  # it could not run now anyway: not a jump over it
            if head is None:
                head = key
            if prefer is None or group == prefer:
                chosen = key
                break
            passed.append(key)
        else:
            chosen = head  # nothing of the preferred group: the oldest job that may run
        if chosen is None or head is None:
            return None
        if chosen != head and any(self._jumped[k] >= self.max_jumps for k in passed):
            chosen = head  # someone was jumped often enough: it goes now, swap or not
        if chosen != head:
            for other in passed:
                self._jumped[other] += 1
        return self._take(self._owner[chosen], chosen)

    def _take(self, user_id: int, key: str) -> tuple[str, T]:
        """Serve ``key`` (any of the user's waiting jobs): it counts as the user's turn."""
        line = self._lines[user_id]
        index = next(i for i, (k, _) in enumerate(line.jobs) if k == key)
        item = line.jobs[index][1]
        del line.jobs[index]
        del self._owner[key]
        self._group.pop(key, None)
        self._jumped.pop(key, None)
        line.round += 1
        line.last_served = next(self._seq)
        if not line.jobs:
            del self._lines[user_id]
        return key, item

    def remove(self, key: str) -> T | None:
        user_id = self._owner.pop(key, None)
        if user_id is None:
            return None
        self._group.pop(key, None)
        self._jumped.pop(key, None)
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
