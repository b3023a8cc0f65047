"""The job half of a GPU worker: the taskiq task that turns one job message into a result.

``engine.worker.Worker`` (the process: model, stream, heartbeats, signals) inherits this. For
each delivery: read the message strictly (``engine.redis.wire``; one it cannot read is failed
with a plain message), skip stale entries and duplicates, count the delivery, take the claim
(``engine.redis.ledger``), render on the GPU thread with progress events and a cancel / deadline
check at every step, and return the ``ResultEnvelope`` that taskiq stores.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from taskiq.exceptions import NoResultError

from engine.admission import CANCELLED_MESSAGE, ERROR_MESSAGE, free_memory_after_crash
from engine.contract import FailureKind, JobFailed, JobRequest, JobResult
from engine.metrics import WorkerMetrics
from engine.queue import preview_kwargs
from engine.redis.ledger import JobLedger
from engine.redis.settings import RemoteSettings
from engine.redis.wire import (
    JobMessage,
    ProgressEvent,
    ResultEnvelope,
    StartedEvent,
    WireError,
    WorkerState,
    log_skipped,
    parse_job,
)

logger = logging.getLogger(__name__)

UNREADABLE_JOB_MESSAGE = (
    "The GPU worker could not read this request (bot and workers on different versions?)."
)

NOT_CAPABLE_MESSAGE = "No GPU worker that can run this kind of job took it; nothing was charged."

Envelope = dict[str, Any]  # a ResultEnvelope as taskiq stores it


def failure(kind: FailureKind, message: str) -> Envelope:
    """The stored outcome of a job that produced no image."""
    return ResultEnvelope.failure(JobFailed(kind, message)).model_dump(mode="json")


class WorkerJobs:
    """Runs one delivered job; the worker process supplies the state declared here."""

    remote: RemoteSettings
    name: str
    generator: Any
    capabilities: tuple[str, ...]
    metrics: WorkerMetrics
    state: WorkerState
    current_job: str | None
    jobs_done: int
    _sec_per_step: float | None
    _gpu: ThreadPoolExecutor
    _ledger: JobLedger | None
    _stop: asyncio.Event | None
    _crashes: int
    _crashed_out: bool

    def request_stop(self) -> None:
        """Finish the current job, take no new one, then exit (the worker process does it)."""
        raise NotImplementedError

    def _emit(self, event: str) -> None:
        """Queue an event for the bot (the worker process publishes it)."""
        raise NotImplementedError

    async def _beat_quietly(self) -> None:
        """Announce the current state at once (the worker process writes the heartbeat)."""
        raise NotImplementedError

    def _task_function(self) -> Any:
        """A plain function for taskiq to register (it renames what it wraps). It takes any
        arguments, so a message of another shape reaches ``_job`` and is answered there."""

        async def generate_image(*args: Any, **kwargs: Any) -> Envelope:
            return await self._job(args, kwargs)

        return generate_image

    async def _job(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Envelope:
        """The taskiq task. Returns the outcome as data; raises only ``NoResultError`` (a
        duplicate whose result another worker stored: nothing is saved, the entry is acked)."""
        assert self._ledger is not None
        try:
            message, job = parse_job(args, kwargs)
        except WireError as exc:
            # Stored under the message's task id (the job id): the bot fails that job with a
            # plain message and refunds it instead of waiting for an image forever.
            log_skipped("the job stream", exc)
            self.metrics.outcome("invalid")
            return failure(FailureKind.ERROR, UNREADABLE_JOB_MESSAGE)
        except JobFailed as exc:  # readable, but bad input (e.g. a source image that is not one)
            logger.info("job refused: %s", exc)
            self.metrics.outcome("invalid")
            return ResultEnvelope.failure(exc).model_dump(mode="json")
        job_id = job.job_id
        picked_at = time.time()
        self.metrics.ack_latency.observe(max(0.0, picked_at - message.dispatched_at))
        if job.needs not in self.capabilities:
            # Only a job put on the wrong stream by hand (or an old bot) gets here: say so
            # instead of failing inside the pipeline.
            logger.warning("job %s needs %r, which this worker cannot run", job_id, job.needs)
            self.metrics.outcome("invalid")
            return failure(FailureKind.UNAVAILABLE, NOT_CAPABLE_MESSAGE)

        if picked_at - message.dispatched_at > self.remote.result_ttl_s:
            # Only a consumer group rebuilt by hand replays entries this old; nobody waits.
            age = picked_at - message.dispatched_at
            logger.warning("job %s was handed out %.0fs ago; dropping it", job_id, age)
            self.metrics.outcome("stale")
            raise NoResultError
        if await self._ledger.finished(job_id):
            logger.info("job %s was already delivered; skipping the duplicate", job_id)
            self.metrics.outcome("duplicate")
            raise NoResultError
        attempt = await self._ledger.count_delivery(job_id)
        if attempt > 1:
            self.metrics.redeliveries.inc()
            logger.warning("job %s: delivery %d (a worker stopped answering)", job_id, attempt)
        if attempt > self.remote.max_attempts:
            self.metrics.outcome("error")
            return failure(
                FailureKind.ERROR,
                f"This image stopped its GPU worker {attempt - 1} times, so it was not tried "
                "again.",
            )
        if not await self._ledger.claim(job_id):
            self.metrics.outcome("duplicate")
            raise NoResultError
        if await self._ledger.cancelled(job_id):
            self.metrics.outcome("cancelled")
            return failure(FailureKind.CANCELLED, CANCELLED_MESSAGE)
        return await self._render(job, message, picked_at)

    def _count_crash(self) -> None:
        """After ``IMAGINE_WORKER_MAX_CRASHES`` crashes in a row the GPU is likely in a bad state
        that only a new process clears: stop (this job's answer is saved first) and exit 1."""
        self._crashes += 1
        limit = self.remote.worker_max_crashes
        if self._crashes >= limit and not self._crashed_out:
            logger.error(
                "%d jobs crashed in a row; exiting so that the supervisor restarts this worker",
                self._crashes,
            )
            self._crashed_out = True
            self.request_stop()

    async def _render(self, job: JobRequest, message: JobMessage, picked_at: float) -> Envelope:
        assert self._ledger is not None
        job_id = job.job_id
        loop = asyncio.get_running_loop()
        stop: list[FailureKind] = []
        superseded: list[bool] = []
        last: list[tuple[int, float]] = [(0, 0.0)]

        def on_progress(
            step: int, total: int, elapsed: float, per_step: float, preview: bytes | None = None
        ) -> None:
            done_steps, done_s = last[0]
            if step > done_steps:
                self.metrics.step_seconds.observe((elapsed - done_s) / (step - done_steps))
            last[0] = (step, elapsed)
            event = ProgressEvent.of(job_id, self.name, step, total, elapsed, per_step, preview)
            self._emit(event.dumps())

        def on_step(step: int, total: int, elapsed: float, per_step: float) -> None:
            loop.call_soon_threadsafe(on_progress, step, total, elapsed, per_step)

        def on_preview(step: int, total: int, elapsed: float, per_step: float, jpeg: bytes) -> None:
            loop.call_soon_threadsafe(on_progress, step, total, elapsed, per_step, jpeg)

        def should_stop() -> FailureKind | None:
            return stop[0] if stop else None

        self.current_job = job_id
        self.state = WorkerState.BUSY
        self.metrics.busy.set(1)
        self._emit(StartedEvent(job_id=job_id, worker=self.name).dumps())
        await self._beat_quietly()
        watcher = asyncio.create_task(self._ledger.watch(job_id, stop, superseded))
        try:
            result: JobResult = await loop.run_in_executor(
                self._gpu,
                functools.partial(
                    self.generator.generate,
                    job,
                    on_step,
                    should_stop,
                    **preview_kwargs(self.generator, on_preview),
                ),
            )
        except JobFailed as exc:
            self._crashes = 0  # the GPU answered (OOM, cancel, deadline): it still works
            if superseded:
                self.metrics.outcome("duplicate")
                raise NoResultError from None
            logger.info("job %s failed: %s", job_id, exc)
            self.metrics.outcome(str(exc.kind))
            return ResultEnvelope.failure(exc).model_dump(mode="json")
        except Exception:
            logger.exception("job %s crashed", job_id)
            free_memory_after_crash(self.generator)
            self.metrics.outcome("error")
            self._count_crash()
            return failure(FailureKind.ERROR, ERROR_MESSAGE)
        finally:
            watcher.cancel()
            self.current_job = None
            stopping = self._stop is not None and self._stop.is_set()
            self.state = WorkerState.STOPPING if stopping else WorkerState.IDLE
            self.metrics.busy.set(0)
            await self._beat_quietly()
        self._crashes = 0
        self.jobs_done += 1
        self.metrics.image_seconds.observe(result.run_s)
        if result.steps:
            per_step = result.run_s / result.steps
            ema = self._sec_per_step
            self._sec_per_step = per_step if ema is None else 0.7 * ema + 0.3 * per_step
        queued_s = max(0.0, picked_at - message.submitted_at)
        result = dataclasses.replace(result, worker=self.name, queued_s=queued_s)
        self.metrics.outcome("done")
        logger.info("job %s done in %.2fs (%s)", job_id, result.run_s, result.mode)
        return ResultEnvelope.success(result).model_dump(mode="json")
