"""Helpers of the engine tests, importable from any test module (fixtures wrap them in
``conftest.py``): a forward counter, a generator that can hold a job at its first step, and
polling for state that lives in another thread, process or Redis."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from engine.contract import FailureKind, JobRequest, JobResult, Mode
from engine.generator import Generator, GeneratorInfo, JobControl, Plan
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


class _Gate:
    """A job's control that marks the job started at its first step, holding it there while
    its gate is closed."""

    def __init__(
        self, control: JobControl, started: threading.Event, gate: threading.Event | None
    ) -> None:
        self.control = control
        self.started = started
        self.gate = gate
        self.followed = True
        self.previews = control.previews

    def step(self, step: int, total: int, elapsed_s: float, preview: bytes | None = None) -> None:
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        self.control.step(step, total, elapsed_s, preview)

    def stop_reason(self) -> FailureKind | None:
        return self.control.stop_reason()


class GatedGenerator(Generator):
    """Wraps the real tiny generator: records run order and can hold a job at its first step."""

    def __init__(self, inner: ImageGenerator) -> None:
        self.inner = inner
        self.order: list[str] = []
        self.hold: dict[str, threading.Event] = {}
        self.started: dict[str, threading.Event] = {}

    def tasks(self) -> tuple[str, ...]:
        return self.inner.tasks()

    def info(self) -> GeneratorInfo:
        return self.inner.info()

    def plan(self, request: JobRequest) -> Plan:
        return self.inner.plan(request)

    def free_memory(self) -> None:
        self.inner.free_memory()

    def generate(
        self, request: JobRequest, control: JobControl, plan: Plan | None = None
    ) -> JobResult:
        self.order.append(request.job_id)
        started = self.started.setdefault(request.job_id, threading.Event())
        gate = _Gate(control, started, self.hold.get(request.job_id))
        return self.inner.generate(request, gate, plan)

    def release(self) -> None:
        """Let every held job go on (teardown)."""
        for gate in self.hold.values():
            gate.set()


class Recorder:
    """A ``JobControl`` that collects what the GPU thread reports: plain steps, and the steps
    that carry a preview (each step is one or the other). ``tick`` runs after every step;
    with ``stop_after``, the job is cancelled once that many steps were reported."""

    followed = True
    previews = True

    def __init__(
        self, tick: Callable[[], None] | None = None, *, stop_after: int | None = None
    ) -> None:
        self.steps: list[int] = []
        self.totals: set[int] = set()
        self.previews_seen: dict[int, bytes] = {}
        self.tick = tick
        self.stop_after = stop_after

    def step(self, step: int, total: int, elapsed_s: float, preview: bytes | None = None) -> None:
        self.totals.add(total)
        if preview is None:
            self.steps.append(step)
        else:
            self.previews_seen[step] = preview
        if self.tick is not None:
            self.tick()

    def stop_reason(self) -> FailureKind | None:
        reported = len(self.steps) + len(self.previews_seen)
        if self.stop_after is not None and reported >= self.stop_after:
            return FailureKind.CANCELLED
        return None


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
