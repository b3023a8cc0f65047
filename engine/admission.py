"""What both image backends decide the same way: who may queue, how a job's future settles.

The in-process ``LocalEngine`` and the Redis ``RedisBackend`` used to carry their own copies of
this (handle class, refusal messages, future settling); one copy means a member gets the same
answer from either backend, and a fix lands in both. (Running a job is ``engine.runner``'s.)

The per-member rule members see is their server's ``/limits max_queued``, enforced by the bot
when it reserves the job. The engine's ``queued_ceiling_per_user`` is only a safety ceiling
above that (a runaway client, or a server with "no limit"), so it must never bind first.
"""

from __future__ import annotations

import asyncio
import logging

from engine.contract import FailureKind, JobFailed, JobResult
from engine.settings import EngineSettings

logger = logging.getLogger(__name__)

CANCELLED_MESSAGE = "The generation was cancelled."
SHUT_DOWN_MESSAGE = "The image engine shut down."
NOT_RUNNING_MESSAGE = "The image engine is not running."
QUEUE_FULL_MESSAGE = "The queue is full right now; try again in a minute."
# Why editing is off, in words members read (/edit, the Edit button, /status): never "turned
# off on this server" when no admin of the server turned anything off.
EDIT_OFF_MESSAGE = "Image editing is turned off on this bot by its operator."
EDIT_FAILED_MESSAGE = (
    "Image editing is unavailable: the edit model could not be loaded (the bot's log says why)."
)
EDIT_NEEDS_GPU_MESSAGE = "Image editing is unavailable: the edit model needs a GPU."
EDIT_NOT_ACROSS_GPUS_MESSAGE = (
    "Image editing is unavailable while each image runs across several GPUs (IMAGINE_GPUS)."
)
NOT_HERE_MESSAGE = "This GPU worker cannot run this kind of job."


def ceiling_message(count: int) -> str:
    """What a member reads when the engine's safety ceiling stops one more image."""
    return f"You already have {count} images waiting; wait for one to finish."


class FutureHandle:
    """A submitted job (the ``JobHandle`` of both backends).

    Awaiting ``result`` is shielded: a cancelled awaiter (a closed Discord view, a timeout in
    the caller) never cancels the job itself; only ``backend.cancel(job_id)`` does.
    """

    def __init__(self, job_id: str, future: asyncio.Future[JobResult]) -> None:
        self.job_id = job_id
        self._future = future

    async def result(self) -> JobResult:
        """The image, or raises ``JobFailed``."""
        return await asyncio.shield(self._future)


def check_room(settings: EngineSettings, *, users_jobs: int, waiting: int) -> None:
    """Refuse a new job with a ``JobFailed(QUEUE_FULL)`` the member can read, or return.

    ``users_jobs`` counts the user's jobs waiting or running in this backend; ``waiting`` the
    jobs of everyone that wait for the GPU.
    """
    if users_jobs >= settings.queued_ceiling_per_user:
        logger.info("refused a job: user at the engine ceiling (%d)", users_jobs)
        raise JobFailed(FailureKind.QUEUE_FULL, ceiling_message(users_jobs))
    if waiting >= settings.max_queue:
        logger.info("refused a job: the queue holds %d jobs", waiting)
        raise JobFailed(FailureKind.QUEUE_FULL, QUEUE_FULL_MESSAGE)


def settle(future: asyncio.Future[JobResult], outcome: JobResult | JobFailed) -> bool:
    """Resolve a job's future once; later outcomes (a duplicate, a late cancel) are dropped.

    Returns whether this call settled it. A failure nobody awaits (a refused or cancelled job
    whose caller went away) is marked retrieved, so asyncio logs no "exception never retrieved".
    """
    if future.done():
        return False
    if isinstance(outcome, JobFailed):
        future.set_exception(outcome)
        future.exception()
    else:
        future.set_result(outcome)
    return True


def settle_threadsafe(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[JobResult],
    outcome: JobResult | JobFailed,
    job_id: str,
) -> None:
    """``settle`` from another thread (the GPU thread), on the loop that owns the future."""
    try:
        loop.call_soon_threadsafe(settle, future, outcome)
    except RuntimeError:  # the submitting loop is closed: nobody is waiting any more
        logger.debug("job %s finished after its event loop closed", job_id)
