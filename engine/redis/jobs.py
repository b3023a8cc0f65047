"""A job the bot follows through Redis, and what a worker's stored result means for it.

Shared by the public half of the backend (``engine.redis.backend``, which creates jobs) and
its loops (``engine.redis.loops``, which move them on); the result parser is also what the
remote engine's callers use (``engine.remote``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from typing import Protocol

from engine.contract import FailureKind, JobFailed, JobRequest, JobResult, ProgressCallback
from engine.redis.wire import brief, parse_result
from engine.runner import ERROR_MESSAGE

logger = logging.getLogger(__name__)


class StoredResult(Protocol):
    """What the bot reads of a taskiq result (``TaskiqResult``, whatever its value type): the
    value is untrusted until ``parse_result`` has read it."""

    @property
    def is_err(self) -> bool: ...

    @property
    def error(self) -> BaseException | None: ...

    @property
    def return_value(self) -> object: ...


def parse_outcome(job_id: str, result: StoredResult) -> JobResult | JobFailed:
    """What a worker stored for a job; an unreadable result fails the job with a plain message
    (the member is refunded) instead of leaving it waiting forever."""
    if result.is_err:
        logger.error(
            "job %s: worker stored an error result: %s", job_id, brief(result.error or "no details")
        )
        return JobFailed(FailureKind.ERROR, ERROR_MESSAGE)
    try:
        return parse_result(result.return_value)
    except Exception as exc:  # WireError, or anything a hostile value makes the parser raise
        logger.error("job %s: unreadable result (%s)", job_id, brief(exc))
        return JobFailed(FailureKind.ERROR, ERROR_MESSAGE)


@dataclasses.dataclass(eq=False)
class RemoteJob:
    request: JobRequest
    future: asyncio.Future[JobResult]
    on_progress: ProgressCallback | None
    submitted_at: float
    # waiting (bot's FairQueue) -> dispatching (being written to Redis) -> dispatched -> running
    state: str = "waiting"
    worker: str | None = None
    attempt: int = 0
    completing: bool = False
    # The bot's own deadline for an answer (monotonic): the GPU deadline plus a margin, from
    # the hand-over or the latest start. Past it the job fails plainly and frees its slot.
    answer_by: float = math.inf
