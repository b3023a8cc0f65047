"""The GPU worker: one process, one GPU, one job at a time, taken from Redis through taskiq.

``python -m engine.worker`` (``engine/worker.py``, the command line) runs one ``Worker``. The
process loads the models once, then takes one job at a time from the taskiq Redis Streams
broker, runs it through ``engine.runner.JobRunner`` (the runner of the in-process backend too),
reports every denoising step to the bot, and returns the result through the result backend.

Why a job reaches the user exactly once although the stream delivers at least once:

* the message is acknowledged only after the result is saved (``WHEN_SAVED``), so a worker
  killed mid-job leaves it pending and another worker reclaims it (XAUTOCLAIM) once it has been
  idle for ``IMAGINE_REDELIVER_AFTER_S``;
* while a worker runs a job it renews the stream entry's idle time and its claim every
  heartbeat (``engine.redis.presence``), so a *slow* job is never mistaken for an abandoned one;
* a redelivered job whose result exists is skipped, a job claimed by a live worker is waited
  for, and results are stored first-write-wins (``engine.redis.ledger``).

Deadlines and cancellation act inside the pipeline's step callback, so a job nobody waits for
any more frees the GPU at the next step instead of running to the end. A job message this
version cannot read (``engine.redis.wire``) is failed with a plain message and the worker takes
the next one; a job of a task this worker does not run is refused the same way.

A worker announces the tasks its generator runs (``generate``, and ``edit`` when
``IMAGINE_EDIT_MODEL`` loaded) in its heartbeat and reads the stream of each; a worker without
a task never reads its stream, so it never takes such a job
(``engine.redis.keys.RedisKeys.stream_for``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from redis.asyncio import Redis
from taskiq.acks import AcknowledgeType
from taskiq.exceptions import NoResultError
from taskiq.receiver import Receiver

from engine.admission import CANCELLED_MESSAGE
from engine.contract import TASK_GENERATE, FailureKind, JobFailed, JobResult, Progress
from engine.generator import Generator, GeneratorInfo
from engine.metrics import WorkerMetrics
from engine.redis.broker import JobEventsMiddleware, ResilientStreamBroker, make_broker
from engine.redis.connection import REDIS_DOWN, make_redis, retry_forever
from engine.redis.health import health_file_path, remove_health, write_health
from engine.redis.keys import TASK_NAME, RedisKeys
from engine.redis.ledger import JobLedger
from engine.redis.presence import Presence
from engine.redis.settings import RemoteSettings, redact_url
from engine.redis.wire import (
    Heartbeat,
    ParsedJob,
    ProgressEvent,
    ResultEnvelope,
    StartedEvent,
    WireError,
    WorkerEvent,
    WorkerState,
    log_skipped,
    parse_job,
)
from engine.runner import JobRunner
from engine.settings import EngineSettings

logger = logging.getLogger(__name__)

UNREADABLE_JOB_MESSAGE = (
    "The GPU worker could not read this request (bot and workers on different versions?)."
)
NOT_CAPABLE_MESSAGE = "No GPU worker that can run this kind of job took it; nothing was charged."

Envelope = dict[str, object]  # a ResultEnvelope as taskiq stores it
TaskFunction = Callable[..., Awaitable[Envelope]]


def failure(kind: FailureKind, message: str, version: int = ResultEnvelope.VERSION) -> Envelope:
    """The stored outcome of a job that produced nothing, in the version it was asked in."""
    return ResultEnvelope.failure(JobFailed(kind, message)).document_for(version)


def default_worker_name() -> str:
    """Host name plus the GPU it was given, e.g. ``gpu-box-gpu1``: what /status shows."""
    host = socket.gethostname().split(".")[0] or "worker"
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return f"{host}-gpu{devices.replace(',', '+')}" if devices else host


def load_engine(settings: EngineSettings) -> Generator:
    """The worker's models, loaded and warmed (torch is imported here, not at import time)."""
    from engine.generators import load_generators

    generator = load_generators(settings)
    if settings.warmup:
        generator.warmup()
    return generator


class Worker:
    """One GPU, its models, one job at a time: the process's life (load, stream, heartbeats,
    stop) and each job's (read, claim, run, answer)."""

    def __init__(
        self,
        remote: RemoteSettings,
        engine: EngineSettings,
        generator: Generator | None = None,
        *,
        name: str | None = None,
        metrics: WorkerMetrics | None = None,
        load: Callable[[EngineSettings], Generator] = load_engine,
    ) -> None:
        self.remote = remote
        self.engine = engine
        if not self.remote.redis_url:
            raise ValueError("the worker needs IMAGINE_REDIS_URL")
        self.keys = RedisKeys(self.remote.redis_prefix)
        self.name = name or self.remote.worker_name or default_worker_name()
        # Unique per process: two workers that share a name never share stream entries.
        self.consumer = f"{self.name}#{uuid.uuid4().hex[:8]}"
        self.generator = generator
        self._load = load
        self._runner = JobRunner(generator) if generator is not None else None
        self.metrics = metrics or WorkerMetrics()
        self.state = WorkerState.STARTING
        self.current_job: str | None = None
        self.jobs_done = 0
        # Announced once the models are loaded; until then the worker takes no job at all.
        self.capabilities: tuple[str, ...] = (TASK_GENERATE,)
        self.started_at = time.time()
        self._info: GeneratorInfo | None = None
        self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagine-gpu")
        self._redis: Redis | None = None
        self._presence: Presence | None = None
        self._ledger: JobLedger | None = None
        self._broker: ResilientStreamBroker | None = None
        self._stop: asyncio.Event | None = None
        self._events: asyncio.Queue[str] | None = None
        self._redis_down = False
        self._crashes = 0  # jobs that crashed in a row
        self._crashed_out = False
        self.health_file = health_file_path(self.remote, self.name)
        self._leaving = False
        self._health_warned = False

    @property
    def exit_code(self) -> int:
        """1 after crashes in a row (so a supervisor restarts the process), else 0."""
        return 1 if self._crashed_out else 0

    # ---------------------------------------------------------------- lifecycle
    def request_stop(self) -> None:
        """Finish the current job, take no new one, then exit (SIGTERM)."""
        if self._stop is not None and not self._stop.is_set():
            logger.info("stopping after the current job")
            self.state = WorkerState.STOPPING
            self._stop.set()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        self._stop = stop or asyncio.Event()
        self._events = asyncio.Queue(maxsize=256)
        self._redis = make_redis(self.remote)
        self._presence = Presence(self._redis, self.keys, self.remote, self.consumer)
        self._ledger = JobLedger(self._redis, self.keys, self.remote, self.consumer)
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="imagine-heartbeat"),
            asyncio.create_task(self._publisher(), name="imagine-events"),
        ]
        try:
            if self.generator is None:
                self.state = WorkerState.LOADING
                await self._beat_quietly()
                self.generator = await asyncio.to_thread(self._load, self.engine)
                self._runner = JobRunner(self.generator)
            if self._stop.is_set():
                return
            self._info = self.generator.info()
            self.capabilities = self.generator.tasks() or (TASK_GENERATE,)
            self._presence.streams = self.keys.streams_for(self.capabilities)
            self.metrics.describe({"name": self.name, **dataclasses.asdict(self._info)})
            broker = make_broker(
                self.remote, self.keys, consumer_name=self.consumer, capabilities=self.capabilities
            )
            broker.is_worker_process = True
            broker.add_middlewares(JobEventsMiddleware(self._redis, self.keys, self.name))
            broker.register_task(self._task_function(), task_name=TASK_NAME)
            self._broker = broker
            await retry_forever("joining the job stream", broker.startup)
            await self._presence.forget_dead_consumers()
            stopping = self._stop.is_set()
            self.state = WorkerState.STOPPING if stopping else WorkerState.IDLE
            await self._beat_quietly()
            self._emit(WorkerEvent(worker=self.name, state=self.state).dumps())
            logger.info(
                "worker %s ready on %s (%s, %s; runs %s) — jobs from %s",
                self.name,
                self._info.gpu,
                self._info.memory_mode,
                self._info.model,
                ", ".join(self.capabilities),
                redact_url(str(self.remote.redis_url)),
            )
            receiver = Receiver(
                broker,
                max_async_tasks=1,
                max_prefetch=0,
                ack_type=AcknowledgeType.WHEN_SAVED,
                run_startup=False,
                propagate_exceptions=False,
            )
            closer = asyncio.create_task(self._close_stream_on_stop(broker))
            background.append(closer)
            await receiver.listen(self._stop)
        finally:
            self.state = WorkerState.STOPPING
            self._leaving = True  # no heartbeat rewrites the health file from here on
            remove_health(self.health_file)
            await self._presence.leave(self.name)
            for task in background:
                task.cancel()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.gather(*background, return_exceptions=True)
            if self._broker is not None:
                with contextlib.suppress(*REDIS_DOWN):
                    await self._broker.shutdown()
            with contextlib.suppress(*REDIS_DOWN):
                await self._redis.aclose()
            self._gpu.shutdown(wait=False)
            logger.info("worker %s stopped after %d images", self.name, self.jobs_done)

    async def _close_stream_on_stop(self, broker: ResilientStreamBroker) -> None:
        assert self._stop is not None
        await self._stop.wait()
        self.state = WorkerState.STOPPING
        broker.closing = True
        await self._beat_quietly()  # capacity 0 at once: the bot sends nothing more here

    # --------------------------------------------------------------- heartbeats
    def heartbeat(self) -> Heartbeat:
        """What this worker announces now (``/status``, free slots for the dispatcher)."""
        info = self._info
        generator = self.generator
        return Heartbeat(
            name=self.name,
            consumer=self.consumer,
            host=socket.gethostname(),
            pid=os.getpid(),
            state=self.state,
            capacity=1 if self.state.ready else 0,
            gpu=info.gpu if info is not None else "loading",
            memory_gb=info.memory_gb if info is not None else 0.0,
            memory_mode=info.memory_mode if info is not None else "loading",
            model=info.model if info is not None else self.engine.model,
            fast_available=info.fast_available if info is not None else False,
            current_job=self.current_job,
            jobs_done=self.jobs_done,
            sec_per_step=self._runner.sec_per_step if self._runner is not None else None,
            started_at=self.started_at,
            last_seen=time.time(),
            capabilities=list(self.capabilities),
            resident_models=list(generator.resident_models()) if generator and info else [],
        )

    async def _beat_quietly(self) -> None:
        assert self._presence is not None
        with contextlib.suppress(*REDIS_DOWN):
            await self._presence.beat(self.heartbeat())

    async def _heartbeat_loop(self) -> None:
        assert self._presence is not None
        while True:
            try:
                await self._presence.beat(self.heartbeat())
                self._write_health()
                if self._broker is not None:
                    await self._presence.renew_leases(self.current_job)
                    with contextlib.suppress(*REDIS_DOWN):
                        depth = await self._presence.queue_depth()
                        if depth is not None:
                            self.metrics.queue_depth.set(depth)
                if self._redis_down:
                    logger.info("Redis is reachable again")
                self._redis_down = False
            except REDIS_DOWN as exc:
                if not self._redis_down:
                    logger.warning("Redis unreachable (%s); the current job goes on", exc)
                self._redis_down = True
                if self._broker is not None:
                    self._broker.hold_reclaim()
            await asyncio.sleep(self.remote.heartbeat_s)

    def _write_health(self) -> None:
        """The Docker health check reads this file: rewritten after every heartbeat that
        reached Redis, so a worker that hangs or lost Redis turns unhealthy."""
        if self._leaving or self._crashed_out:
            return
        try:
            write_health(self.health_file, self.name, str(self.state))
            self._health_warned = False
        except OSError as exc:
            if not self._health_warned:
                logger.warning("cannot write the health file %s: %s", self.health_file, exc)
                self._health_warned = True

    # --------------------------------------------------------------- job events
    def _emit(self, event: str) -> None:
        """Queue an event for the bot; progress is best effort and never blocks the GPU."""
        if self._events is None:
            return
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(event)

    async def _publisher(self) -> None:
        assert self._events is not None and self._redis is not None
        while True:
            event = await self._events.get()
            with contextlib.suppress(*REDIS_DOWN):
                await self._redis.publish(self.keys.events, event)

    # --------------------------------------------------------------------- jobs
    def _task_function(self) -> TaskFunction:
        """A plain function for taskiq to register (it renames what it wraps). It takes any
        arguments, so a message of another shape reaches ``_job`` and is answered there."""

        async def generate_image(*args: object, **kwargs: object) -> Envelope:
            return await self._job(args, kwargs)

        return generate_image

    async def _job(self, args: tuple[object, ...], kwargs: dict[str, object]) -> Envelope:
        """The taskiq task. Returns the outcome as data; raises only ``NoResultError`` (a
        duplicate whose result another worker stored: nothing is saved, the entry is acked)."""
        assert self._ledger is not None
        try:
            parsed = parse_job(args, kwargs)
        except WireError as exc:
            # Stored under the message's task id (the job id): the bot fails that job with a
            # plain message and refunds it instead of waiting for an image forever.
            log_skipped("the job stream", exc)
            self.metrics.outcome("invalid")
            return failure(FailureKind.ERROR, UNREADABLE_JOB_MESSAGE)
        message, job, version = parsed.message, parsed.request, parsed.version
        try:
            job.validate()
        except JobFailed as exc:  # readable, but bad input (e.g. an image over the byte cap)
            logger.info("job %s refused: %s", job.job_id, exc)
            self.metrics.outcome("invalid")
            return ResultEnvelope.failure(exc).document_for(version)
        job_id = job.job_id
        picked_at = time.time()
        self.metrics.ack_latency.observe(max(0.0, picked_at - message.dispatched_at))
        if job.task not in self.capabilities:
            # Only a job put on the wrong stream by hand (or an old bot) gets here: say so
            # instead of failing inside the pipeline.
            logger.warning("job %s needs %r, which this worker cannot run", job_id, job.task)
            self.metrics.outcome("invalid")
            return failure(FailureKind.UNAVAILABLE, NOT_CAPABLE_MESSAGE, version)

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
                version,
            )
        if not await self._ledger.claim(job_id):
            self.metrics.outcome("duplicate")
            raise NoResultError
        if await self._ledger.cancelled(job_id):
            self.metrics.outcome("cancelled")
            return failure(FailureKind.CANCELLED, CANCELLED_MESSAGE, version)
        return await self._render(parsed, picked_at)

    def _count_crash(self) -> None:
        """After ``IMAGINE_WORKER_MAX_CRASHES`` jobs in a row that lost the CUDA context
        (``engine.runner.context_lost``) the GPU is in a state only a new process clears: stop
        (this job's answer is saved first) and exit 1. Any other failure costs its job only."""
        self._crashes += 1
        limit = self.remote.worker_max_crashes
        if self._crashes >= limit and not self._crashed_out:
            logger.error(
                "%d jobs crashed in a row; exiting so that the supervisor restarts this worker",
                self._crashes,
            )
            self._crashed_out = True
            self.request_stop()

    async def _render(self, parsed: ParsedJob, picked_at: float) -> Envelope:
        assert self._ledger is not None and self._runner is not None
        job, message = parsed.request, parsed.message
        job_id = job.job_id
        loop = asyncio.get_running_loop()
        stop: list[FailureKind] = []
        superseded: list[bool] = []
        last: list[tuple[int, float]] = [(0, 0.0)]

        def publish(progress: Progress) -> None:
            done_steps, done_s = last[0]
            if progress.step > done_steps:
                seconds = (progress.elapsed_s - done_s) / (progress.step - done_steps)
                self.metrics.step_seconds.observe(seconds)
            last[0] = (progress.step, progress.elapsed_s)
            self._emit(ProgressEvent.of(self.name, progress).dumps())

        def emit(progress: Progress) -> None:  # on the GPU thread
            loop.call_soon_threadsafe(publish, progress)

        def should_stop() -> FailureKind | None:
            return stop[0] if stop else None

        runner = self._runner
        self.current_job = job_id
        self.state = WorkerState.BUSY
        self.metrics.busy.set(1)
        self._emit(StartedEvent(job_id=job_id, worker=self.name).dumps())
        await self._beat_quietly()
        watcher = asyncio.create_task(self._ledger.watch(job_id, stop, superseded))
        try:
            ran = await loop.run_in_executor(
                self._gpu, lambda: runner.run(job, emit=emit, stop=should_stop)
            )
        finally:
            watcher.cancel()
            self.current_job = None
            stopping = self._stop is not None and self._stop.is_set()
            self.state = WorkerState.STOPPING if stopping else WorkerState.IDLE
            self.metrics.busy.set(0)
            await self._beat_quietly()
        outcome = ran.outcome
        if ran.crashed:
            self.metrics.outcome("error")
            self._count_crash()
        else:
            self._crashes = 0  # the GPU answered (a result, OOM, cancel, deadline): it works
        if isinstance(outcome, JobFailed):
            if superseded and not ran.crashed:
                self.metrics.outcome("duplicate")
                raise NoResultError
            self.metrics.outcome(str(outcome.kind))
            return ResultEnvelope.failure(outcome).document_for(parsed.version)
        self.jobs_done += 1
        self.metrics.image_seconds.observe(outcome.run_s)
        queued_s = max(0.0, picked_at - message.submitted_at)
        result: JobResult = dataclasses.replace(outcome, worker=self.name, queued_s=queued_s)
        self.metrics.outcome("done")
        logger.info("job %s done in %.2fs (%s)", job_id, result.run_s, result.mode)
        return ResultEnvelope.success(result).document_for(parsed.version)
