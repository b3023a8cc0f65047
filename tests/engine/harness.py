"""Helpers of the engine tests, importable from any test module (fixtures wrap them in
``conftest.py``): a forward counter, a generator that can hold a job at its first step, and
polling for state that lives in another thread, process or Redis."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from engine.contract import JobRequest, Mode
from engine.pipeline import ImageGenerator


class CountingTransformer:
    """Counts transformer forwards so tests can see whether true CFG ran (two per step)."""

    def __init__(self, generator: ImageGenerator, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        transformer = generator.pipe.transformer
        original = transformer.forward

        def forward(*args: object, **kwargs: object) -> object:
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(transformer, "forward", forward)


class GatedGenerator:
    """Wraps the real tiny generator: records run order and can hold a job at its first step."""

    def __init__(self, inner: ImageGenerator) -> None:
        self.inner = inner
        self.order: list[str] = []
        self.hold: dict[str, threading.Event] = {}
        self.started: dict[str, threading.Event] = {}

    def info(self) -> dict[str, object]:
        return self.inner.info()

    def free_memory(self) -> None:
        self.inner.free_memory()

    def generate(self, request: JobRequest, on_step: Any = None, should_stop: Any = None) -> Any:
        self.order.append(request.job_id)
        gate = self.hold.get(request.job_id)

        def step(*args: Any) -> None:
            self.started.setdefault(request.job_id, threading.Event()).set()
            if gate is not None:
                gate.wait(10)
            if on_step is not None:
                on_step(*args)

        return self.inner.generate(request, on_step=step, should_stop=should_stop)

    def release(self) -> None:
        """Let every held job go on (teardown)."""
        for gate in self.hold.values():
            gate.set()


async def wait_started(gated: GatedGenerator, job_id: str) -> None:
    """Until the job's first denoising step ran on the GPU thread."""
    event = gated.started.setdefault(job_id, threading.Event())
    assert await asyncio.to_thread(event.wait, 10), f"{job_id} never started"


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, within: float = 10.0, every: float = 0.02
) -> None:
    """Poll state that lives in Redis, a worker or another process; fail naming what never
    happened."""
    try:
        async with asyncio.timeout(within):
            while not await check():  # noqa: ASYNC110 - external state, no event to await
                await asyncio.sleep(every)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def job(job_id: str, user_id: int = 1, **fields: Any) -> JobRequest:
    """A small fast job (8 Lightning steps on the tiny model) unless told otherwise."""
    fields.setdefault("prompt", f"prompt {job_id}")
    fields.setdefault("mode", Mode.FAST)
    return JobRequest(job_id=job_id, user_id=user_id, **fields)
