"""Round-robin-by-user waiting line, shared by the in-process and the Redis backends.

One user queueing five images must never hold back another user's first: the next job is taken
from the user who has waited longest for a turn, one job per turn. Plain Python, no locking: the
caller owns synchronisation (the local backend holds a lock, the Redis dispatcher runs on one
event loop).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    def __init__(self) -> None:
        # user -> that user's jobs in submission order; dict order is the turn order.
        self._by_user: OrderedDict[int, deque[tuple[str, T]]] = OrderedDict()
        self._owner: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._owner)

    def __contains__(self, key: object) -> bool:
        return key in self._owner

    def push(self, user_id: int, key: str, item: T) -> None:
        if key in self._owner:
            raise KeyError(f"job {key} is already queued")
        self._by_user.setdefault(user_id, deque()).append((key, item))
        self._owner[key] = user_id

    def pop(self) -> tuple[str, T] | None:
        """Take the next job: the first job of the user at the front of the turn order."""
        if not self._by_user:
            return None
        user_id, jobs = next(iter(self._by_user.items()))
        key, item = jobs.popleft()
        del self._owner[key]
        # The user goes to the back of the line whether or not they have more jobs.
        del self._by_user[user_id]
        if jobs:
            self._by_user[user_id] = jobs
        return key, item

    def remove(self, key: str) -> T | None:
        user_id = self._owner.pop(key, None)
        if user_id is None:
            return None
        jobs = self._by_user[user_id]
        index = next(i for i, (k, _) in enumerate(jobs) if k == key)
        item = jobs[index][1]
        del jobs[index]
        if not jobs:
            del self._by_user[user_id]
        return item

    def get(self, key: str) -> T | None:
        user_id = self._owner.get(key)
        if user_id is None:
            return None
        return next(item for k, item in self._by_user[user_id] if k == key)

    def count_for(self, user_id: int) -> int:
        jobs = self._by_user.get(user_id)
        return len(jobs) if jobs else 0

    def order(self) -> Iterator[str]:
        """Job keys in the order ``pop`` would return them if nothing else arrived."""
        queues = [list(jobs) for jobs in self._by_user.values()]
        depth = max((len(q) for q in queues), default=0)
        for turn in range(depth):
            for jobs in queues:
                if turn < len(jobs):
                    yield jobs[turn][0]

    def position(self, key: str) -> int | None:
        """1-based place among the waiting jobs, or None when the job is not waiting."""
        if key not in self._owner:
            return None
        for index, k in enumerate(self.order(), start=1):
            if k == key:
                return index
        return None  # unreachable: every owned key is in order()
