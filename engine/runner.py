"""The one GPU job runner: what running a job on the generator means, for both backends.

The in-process backend (``engine.queue.LocalEngine``, on its GPU thread) and each Redis GPU
worker (``engine.redis.worker``, on its GPU executor) hand every job to ``JobRunner.run``, so
progress, previews, cancel, the deadline, out of memory and a crash are answered the same way
whichever backend runs the job, and a fix to one reaches both.

What the runner guarantees: ``run`` never raises. A ``JobFailed`` from the generator (bad input,
out of memory, a cancel or the deadline, decided at a step) is the job's answer; any other
exception fails that job only, with a plain message, after the accelerator's cached memory is
released. Only an error that means the GPU's CUDA context is lost (an illegal memory access, a
device-side assert, "CUDA error" from the driver) is reported as a crash: after such an error
every later job fails the same way until the process starts again, so a worker counts those
and exits for its supervisor to restart it. A bug or a model library that refuses one odd
input (a ``ValueError`` from an image processor) costs that job, never a 20B model reload.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable

from engine.contract import FailureKind, JobFailed, JobRequest, JobResult, Progress
from engine.generator import Generator

logger = logging.getLogger(__name__)

ERROR_MESSAGE = "Something went wrong while generating; it has been logged."

Emit = Callable[[Progress], None]
"""Where a job's progress goes; called on the generating thread (cross to a loop yourself)."""
StopCheck = Callable[[], FailureKind | None]
"""Why the job must stop now (checked at every step), or None."""


# What a CUDA error says when the context is gone for good (torch words them after the driver).
CONTEXT_LOST = (
    "cuda error",
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "misaligned address",
)


def context_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the GPU's CUDA context is lost (every later job would fail too)."""
    text = str(exc).lower()
    return any(words in text for words in CONTEXT_LOST)


@dataclasses.dataclass(frozen=True, slots=True)
class Ran:
    """How one job ended on the GPU: its result or failure, and whether it crashed the GPU
    (an error after which the CUDA context is lost: ``context_lost``)."""

    outcome: JobResult | JobFailed
    crashed: bool = False


class _Control:
    """The ``JobControl`` of one job: its steps become ``Progress`` for ``emit``."""

    def __init__(self, job_id: str, emit: Emit | None, stop: StopCheck, previews: bool) -> None:
        self._job_id = job_id
        self._emit = emit
        self._stop = stop
        self.followed = emit is not None
        self.previews = previews and emit is not None

    def step(self, step: int, total: int, elapsed_s: float, preview: bytes | None = None) -> None:
        if self._emit is not None:
            per_step = elapsed_s / step if step else 0.0
            self._emit(Progress(self._job_id, step, total, elapsed_s, per_step, preview))

    def stop_reason(self) -> FailureKind | None:
        return self._stop()


def _never() -> FailureKind | None:
    return None


class JobRunner:
    """Runs jobs on one generator, one at a time, on the thread that owns it."""

    # Seconds per denoising step of recent jobs: the ETA members see before their job starts.
    RECENT_JOBS = 20

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self._step_times: collections.deque[float] = collections.deque(maxlen=self.RECENT_JOBS)

    @property
    def sec_per_step(self) -> float | None:
        """The mean seconds per step of the recent jobs, or None before the first."""
        times = list(self._step_times)
        return sum(times) / len(times) if times else None

    def run(
        self,
        request: JobRequest,
        *,
        emit: Emit | None = None,
        stop: StopCheck = _never,
        previews: bool = True,
    ) -> Ran:
        """Run one job; never raises (see the module's docstring)."""
        control = _Control(request.job_id, emit, stop, previews)
        try:
            result = self.generator.generate(request, control)
        except JobFailed as exc:
            logger.info("job %s failed: %s", request.job_id, exc)
            return Ran(exc)
        except Exception as exc:
            lost = context_lost(exc)
            logger.exception("job %s %s", request.job_id, "lost the GPU" if lost else "crashed")
            self.free_memory()
            return Ran(JobFailed(FailureKind.ERROR, ERROR_MESSAGE), crashed=lost)
        if result.steps:
            self._step_times.append(result.run_s / result.steps)
        return Ran(result)

    def free_memory(self) -> None:
        """Release what a crashed job left on the GPU; if that fails too, log it and go on: the
        thread (or worker) that runs jobs must live to answer the next one."""
        try:
            self.generator.free_memory()
        except Exception:
            logger.exception("freeing GPU memory after a crash failed too")
