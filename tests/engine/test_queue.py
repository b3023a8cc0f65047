from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
import torch

from engine.admission import ceiling_message
from engine.contract import FailureKind, JobFailed, JobRequest, Mode, Progress
from engine.pipeline import ImageGenerator
from engine.queue import GPU_STOPPED_MESSAGE, GPU_STOPPED_NOTE, LocalEngine
from engine.settings import DEFAULT_QUEUED_CEILING_PER_USER, EngineSettings
from tests.engine.harness import GatedGenerator, wait_started


@pytest.fixture
async def engine(
    generator: ImageGenerator, tiny_settings: EngineSettings
) -> AsyncIterator[tuple[LocalEngine, GatedGenerator]]:
    gated = GatedGenerator(generator)
    local = LocalEngine(tiny_settings.model_copy(update={"queued_ceiling_per_user": 6}), gated)
    await local.start()
    yield local, gated
    gated.release()
    await local.close()


def job(job_id: str, user: int, mode: Mode = Mode.FAST, **extra: Any) -> JobRequest:
    return JobRequest(job_id=job_id, user_id=user, prompt=f"prompt {job_id}", mode=mode, **extra)


async def test_round_robin_across_users(engine: tuple[LocalEngine, GatedGenerator]) -> None:
    local, gated = engine
    gated.hold["blocker"] = threading.Event()
    handles = [await local.submit(job("blocker", 99))]
    await wait_started(gated, "blocker")
    # Alice queues five, then Bob and Carol one each: they must not wait behind all of Alice's.
    for n in range(1, 6):
        handles.append(await local.submit(job(f"alice{n}", 1)))
    handles.append(await local.submit(job("bob1", 2)))
    handles.append(await local.submit(job("carol1", 3)))
    # Position n means n - 1 jobs run or wait before this one.
    assert await local.position("blocker") == 0
    assert await local.position("alice1") == 2
    assert await local.position("bob1") == 3
    assert await local.position("carol1") == 4
    assert await local.position("alice2") == 5
    assert await local.position("alice5") == 8
    assert (await local.status()).queue_length == 7
    gated.hold["blocker"].set()
    results = [await h.result() for h in handles]
    assert gated.order == [
        "blocker", "alice1", "bob1", "carol1", "alice2", "alice3", "alice4", "alice5",
    ]  # fmt: skip
    assert [r.job_id for r in results] == [h.job_id for h in handles]
    assert await local.position("alice5") is None


async def test_cancel_a_queued_job(engine: tuple[LocalEngine, GatedGenerator]) -> None:
    local, gated = engine
    gated.hold["first"] = threading.Event()
    first = await local.submit(job("first", 1))
    await wait_started(gated, "first")
    queued = await local.submit(job("queued", 2))
    assert await local.cancel("queued") is True
    with pytest.raises(JobFailed) as failure:
        await queued.result()
    assert failure.value.kind == FailureKind.CANCELLED
    gated.hold["first"].set()
    await first.result()
    assert "queued" not in gated.order
    assert await local.cancel("queued") is False


async def test_cancel_a_running_job_stops_it_early(
    engine: tuple[LocalEngine, GatedGenerator],
) -> None:
    local, gated = engine
    steps: list[Progress] = []
    gated.hold["long"] = threading.Event()
    handle = await local.submit(job("long", 1, mode=Mode.QUALITY), steps.append)
    await wait_started(gated, "long")
    assert await local.cancel("long") is True
    gated.hold["long"].set()
    with pytest.raises(JobFailed) as failure:
        await handle.result()
    assert failure.value.kind == FailureKind.CANCELLED
    assert len(steps) < 50
    # The GPU thread is free for the next job.
    assert (await (await local.submit(job("next", 1))).result()).job_id == "next"


async def test_progress_reaches_the_event_loop_for_every_step(
    engine: tuple[LocalEngine, GatedGenerator],
) -> None:
    local, _ = engine
    loop_thread = threading.get_ident()
    seen: list[tuple[int, int, int]] = []

    def on_progress(progress: Progress) -> None:
        assert threading.get_ident() == loop_thread
        seen.append((progress.step, progress.total, threading.get_ident()))

    result = await (await local.submit(job("p", 1, mode=Mode.STANDARD), on_progress)).result()
    await asyncio.sleep(0)  # progress callbacks scheduled before the result are delivered
    assert [s[0] for s in seen] == list(range(1, result.steps + 1))
    assert all(total == 30 for _, total, _ in seen)
    status = await local.status()
    assert status.mean_sec_per_step and status.mean_sec_per_step > 0
    assert status.backend == "local" and status.ready


async def test_oom_in_one_job_leaves_the_next_job_working(
    engine: tuple[LocalEngine, GatedGenerator], monkeypatch: pytest.MonkeyPatch
) -> None:
    local, gated = engine
    transformer = gated.inner.pipe.transformer
    original = transformer.forward
    state = {"raised": False}

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not state["raised"]:
            state["raised"] = True
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return original(*args, **kwargs)

    monkeypatch.setattr(transformer, "forward", forward)
    doomed = await local.submit(job("doomed", 1))
    survivor = await local.submit(job("survivor", 2))
    with pytest.raises(JobFailed) as failure:
        await doomed.result()
    assert failure.value.kind == FailureKind.OOM
    assert (await survivor.result()).image.png.startswith(b"\x89PNG")


async def test_a_crash_fails_only_that_job(
    engine: tuple[LocalEngine, GatedGenerator], monkeypatch: pytest.MonkeyPatch
) -> None:
    local, gated = engine
    original = gated.inner.pipe.vae.decode
    state = {"raised": False}

    def decode(*args: Any, **kwargs: Any) -> Any:
        if not state["raised"]:
            state["raised"] = True
            raise ValueError("boom")
        return original(*args, **kwargs)

    monkeypatch.setattr(gated.inner.pipe.vae, "decode", decode)
    with pytest.raises(JobFailed) as failure:
        await (await local.submit(job("crash", 1))).result()
    assert failure.value.kind == FailureKind.ERROR and "boom" not in failure.value.user_message
    assert (await (await local.submit(job("after", 1))).result()).job_id == "after"


async def test_same_job_id_is_never_run_twice(engine: tuple[LocalEngine, GatedGenerator]) -> None:
    local, gated = engine
    gated.hold["dup"] = threading.Event()
    one = await local.submit(job("dup", 1))
    two = await local.submit(job("dup", 1))
    gated.hold["dup"].set()
    assert (await one.result()) is (await two.result())
    assert gated.order.count("dup") == 1


async def test_per_user_cap_and_closed_engine(engine: tuple[LocalEngine, GatedGenerator]) -> None:
    local, gated = engine
    gated.hold["u0"] = threading.Event()
    await local.submit(job("u0", 5))
    await wait_started(gated, "u0")
    for n in range(1, 6):
        await local.submit(job(f"u{n}", 5))
    with pytest.raises(JobFailed) as full:
        await local.submit(job("u6", 5))
    assert full.value.kind == FailureKind.QUEUE_FULL
    # Another user is not affected by user 5's cap.
    await local.submit(job("other", 6))
    gated.hold["u0"].set()
    await local.close()
    with pytest.raises(JobFailed) as closed:
        await local.submit(job("late", 6))
    assert closed.value.kind == FailureKind.UNAVAILABLE


async def test_the_engine_ceiling_sits_above_a_server_limit_of_ten_and_binds_at_25(
    generator: ImageGenerator, tiny_settings: EngineSettings
) -> None:
    # Default settings: a server that allows /limits max_queued:10 must never see the engine
    # refuse its members first; the engine's own ceiling only stops a runaway at 25.
    assert tiny_settings.queued_ceiling_per_user == DEFAULT_QUEUED_CEILING_PER_USER == 25
    gated = GatedGenerator(generator)
    local = LocalEngine(tiny_settings, gated)
    await local.start()
    try:
        gated.hold["q0"] = threading.Event()
        await local.submit(job("q0", 7))
        await wait_started(gated, "q0")
        for n in range(1, 10):  # ten of one member's images at once: all accepted
            await local.submit(job(f"q{n}", 7))
        assert await local.position("q9") == 10
        for n in range(10, 25):
            await local.submit(job(f"q{n}", 7))
        with pytest.raises(JobFailed) as refused:
            await local.submit(job("q25", 7))
        assert refused.value.kind == FailureKind.QUEUE_FULL
        assert refused.value.user_message == (
            "You already have 25 images waiting; wait for one to finish."
        )
        assert refused.value.user_message == ceiling_message(25)
        assert (await local.status()).queued_ceiling_per_user == 25
    finally:
        gated.release()
        await local.close()


class BrokenGenerator(GatedGenerator):
    """A generator whose jobs crash, and whose clean-up after a crash crashes too (a CUDA
    context in a bad state does this)."""

    def __init__(self, inner: ImageGenerator, error: BaseException | None = None) -> None:
        super().__init__(inner)
        self.error = error
        self.broken: set[str] = set()

    def generate(self, request: JobRequest, on_step: Any = None, should_stop: Any = None) -> Any:
        if request.job_id in self.broken:
            self.order.append(request.job_id)
            raise self.error or RuntimeError("CUDA error: an illegal memory access")
        return super().generate(request, on_step, should_stop)

    def free_memory(self) -> None:
        raise RuntimeError("CUDA error: an illegal memory access (while freeing)")


async def test_a_crash_whose_clean_up_crashes_too_fails_only_that_job(
    generator: ImageGenerator, tiny_settings: EngineSettings
) -> None:
    """Finding 4: the crash handler's own failure killed the GPU thread; /healthz said 200."""
    broken = BrokenGenerator(generator)
    broken.broken.add("crash")
    local = LocalEngine(tiny_settings, broken)
    await local.start()
    try:
        with pytest.raises(JobFailed) as failure:
            await (await local.submit(job("crash", 1))).result()
        assert failure.value.kind == FailureKind.ERROR
        assert (await (await local.submit(job("after", 1))).result()).job_id == "after"
        assert (await local.status()).ready is True
    finally:
        await local.close()


async def test_when_the_gpu_thread_dies_every_job_is_failed_and_status_says_so(
    generator: ImageGenerator, tiny_settings: EngineSettings
) -> None:
    """Finding 4: a dead GPU thread kept accepting jobs that were never answered."""
    # Something no ``except Exception`` catches (a library calling sys.exit) ends the thread.
    broken = BrokenGenerator(generator, SystemExit(3))
    broken.broken.add("fatal")
    broken.hold["blocker"] = threading.Event()
    local = LocalEngine(tiny_settings, broken)
    await local.start()
    try:
        blocker = await local.submit(job("blocker", 1))
        await wait_started(broken, "blocker")
        fatal = await local.submit(job("fatal", 2))
        waiting = await local.submit(job("waiting", 3))
        broken.hold["blocker"].set()
        await blocker.result()
        for handle in (fatal, waiting):  # the member is told, so the bot refunds
            with pytest.raises(JobFailed) as failure:
                await handle.result()
            assert failure.value.kind == FailureKind.UNAVAILABLE
            assert failure.value.user_message == GPU_STOPPED_MESSAGE
        status = await local.status()
        assert status.ready is False
        assert status.note == GPU_STOPPED_NOTE
        with pytest.raises(JobFailed) as refused:
            await local.submit(job("late", 4))
        assert refused.value.kind == FailureKind.UNAVAILABLE
    finally:
        broken.release()
        await local.close()
