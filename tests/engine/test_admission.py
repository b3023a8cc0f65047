"""The admission rules and future settling both backends share."""

from __future__ import annotations

import asyncio

import pytest

from engine.admission import (
    QUEUE_FULL_MESSAGE,
    FutureHandle,
    ceiling_message,
    check_room,
    settle,
    settle_threadsafe,
)
from engine.contract import FailureKind, JobFailed, JobResult, Mode, OutputImage
from engine.settings import EngineSettings


def result(job_id: str = "1") -> JobResult:
    return JobResult(
        job_id=job_id,
        images=(OutputImage(png=b"\x89PNG", width=64, height=64, seed=1),),
        steps=8,
        true_cfg_scale=1.0,
        mode=Mode.FAST,
        requested_mode=Mode.FAST,
        style="none",
        prompt="p",
        full_prompt="p",
        negative_prompt=" ",
        aspect="1:1",
        model="tiny",
    )


def test_admit_refuses_at_the_ceiling_and_when_the_queue_is_full() -> None:
    settings = EngineSettings(_env_file=None, queued_ceiling_per_user=4, max_queue=10)  # type: ignore[call-arg]
    check_room(settings, users_jobs=3, waiting=9)  # below both: accepted
    with pytest.raises(JobFailed) as ceiling:
        check_room(settings, users_jobs=4, waiting=0)
    assert ceiling.value.kind == FailureKind.QUEUE_FULL
    assert ceiling.value.user_message == ceiling_message(4)
    assert (
        ceiling.value.user_message == "You already have 4 images waiting; wait for one to finish."
    )
    with pytest.raises(JobFailed) as full:
        check_room(settings, users_jobs=0, waiting=10)
    assert full.value.kind == FailureKind.QUEUE_FULL
    assert full.value.user_message == QUEUE_FULL_MESSAGE


async def test_a_future_settles_once_and_the_first_outcome_stays() -> None:
    future: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
    first = result()
    assert settle(future, first) is True
    assert settle(future, JobFailed(FailureKind.CANCELLED, "late cancel")) is False
    assert await FutureHandle("1", future).result() is first


async def test_a_failure_reaches_the_handle_and_cancelling_the_awaiter_spares_the_job() -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[JobResult] = loop.create_future()
    handle = FutureHandle("2", future)
    waiter = asyncio.create_task(handle.result())
    await asyncio.sleep(0)
    waiter.cancel()  # a caller that gave up
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not future.cancelled()
    # From another thread, as the GPU thread does it.
    failed = JobFailed(FailureKind.OOM, "Out of GPU memory.")
    await asyncio.to_thread(settle_threadsafe, loop, future, failed, "2")
    with pytest.raises(JobFailed) as raised:
        await handle.result()
    assert raised.value is failed


def test_settling_after_the_loop_closed_is_harmless() -> None:
    loop = asyncio.new_event_loop()
    future: asyncio.Future[JobResult] = loop.create_future()
    loop.close()
    settle_threadsafe(loop, future, result(), "3")  # nobody waits any more: no error
    assert not future.done()
