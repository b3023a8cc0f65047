"""Scale-out: the ``ImageBackend`` that hands jobs to GPU workers through taskiq and Redis.

Everything distributed here is taskiq with taskiq-redis: a Redis Streams broker (consumer
group, acknowledgement after the result is saved, idle-time redelivery through XAUTOCLAIM) and
the Redis result backend. What this module adds on top is what a Discord bot needs from it:

* Fairness. The round-robin ``FairQueue`` stays in the bot, exactly as in the in-process
  backend, and a job is handed to the broker only when a worker slot is free (workers announce
  their capacity in heartbeats). Redis never holds a FIFO backlog that would let one user's five
  images run before another user's first.
* Exactly once for the user. The interaction id is the taskiq task id and the job key. Workers
  skip a job whose result already exists, take a ``SET NX`` claim before they run one, and store
  the result with ``SET NX`` (first result wins). The bot resolves each handle once.
* Liveness. A worker keeps the idle time of the stream entry it is running fresh, so only the
  job of a *dead* worker reaches another worker, ``redeliver_after_s`` after its last heartbeat.
* Redis outages. ``submit`` refuses new jobs at once (nothing is charged); jobs already accepted
  wait, and every Redis operation on their path is retried with backoff until Redis is back.

This module never imports torch: the bot imports it. The worker side is ``engine/worker.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import socket
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError, ResponseError
from taskiq import AckableMessage, TaskiqMiddleware, TaskiqResult
from taskiq.exceptions import SendTaskError
from taskiq.kicker import AsyncKicker
from taskiq.message import TaskiqMessage
from taskiq.serializers import JSONSerializer
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker
from taskiq_redis.exceptions import ResultIsMissingError

from engine.contract import (
    EngineStatus,
    FailureKind,
    JobFailed,
    JobRequest,
    JobResult,
    Mode,
    Progress,
    ProgressCallback,
    WorkerInfo,
)
from engine.fairqueue import FairQueue
from engine.settings import EngineSettings

logger = logging.getLogger(__name__)

TASK_NAME = "imagine.generate"

UNAVAILABLE_MESSAGE = (
    "Image workers are unavailable right now — nothing was charged. Please try again in a minute."
)
ERROR_MESSAGE = "Something went wrong while generating; it has been logged."
# Errors that mean "Redis cannot be reached right now" (as opposed to a bug in a command).
REDIS_DOWN = (RedisError, OSError, SendTaskError)


class RemoteSettings(BaseSettings):
    """Settings of the Redis path, shared by the bot (``RedisBackend``) and the workers."""

    model_config = SettingsConfigDict(
        env_prefix="IMAGINE_", env_file=".env", extra="ignore", protected_namespaces=()
    )

    redis_url: str | None = Field(
        None,
        description="redis://[:password@]host:port/db; when set, the bot sends jobs to workers",
    )
    redis_prefix: str = Field(
        "imagine", description="prefix of every Redis key; one bot deployment per prefix"
    )
    heartbeat_s: float = Field(
        5.0, gt=0, description="how often workers announce themselves and renew their job"
    )
    redeliver_after_s: float = Field(
        60.0,
        gt=0,
        description="a dead worker's job goes to another worker after this much silence",
    )
    worker_grace_s: float = Field(
        120.0,
        ge=0,
        description="with no worker online, still accept jobs this long after the last one left",
    )
    result_ttl_s: int = Field(
        86400, gt=0, description="how long an undelivered result waits in Redis for the bot"
    )
    result_keep_s: int = Field(
        900, gt=0, description="how long a delivered result stays (a bot restart can re-read it)"
    )
    max_attempts: int = Field(
        3, ge=1, description="deliveries of one job before it is failed instead of retried"
    )
    stream_maxlen: int = Field(10_000, ge=100, description="trim the job stream to about this")
    connect_timeout_s: float = Field(2.0, gt=0)
    worker_name: str | None = Field(
        None, description="name in /status; default: host name and CUDA_VISIBLE_DEVICES"
    )
    worker_metrics_port: int = Field(
        0, ge=0, le=65535, description="serve Prometheus /metrics on this port (0 = off)"
    )
    worker_metrics_addr: str = Field("0.0.0.0", description="address of the metrics server")

    @model_validator(mode="after")
    def _timings(self) -> RemoteSettings:
        # Redelivery must wait for several missed heartbeats, or a live worker loses its job.
        if self.redeliver_after_s < 4 * self.heartbeat_s:
            raise ValueError(
                f"IMAGINE_REDELIVER_AFTER_S ({self.redeliver_after_s}) must be at least 4x "
                f"IMAGINE_HEARTBEAT_S ({self.heartbeat_s})"
            )
        return self

    @property
    def worker_ttl_s(self) -> float:
        """A worker missing three heartbeats is gone."""
        return 3 * self.heartbeat_s

    @property
    def claim_ttl_s(self) -> float:
        """Shorter than the redelivery idle time, so a dead worker's claim is gone by then."""
        return min(3 * self.heartbeat_s, self.redeliver_after_s / 2)


def redact_url(url: str) -> str:
    """The Redis URL for logs: the password never appears."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


class RedisKeys:
    """Every Redis key and channel of one deployment, in one place."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.stream = f"{prefix}:jobs"
        self.group = f"{prefix}-workers"
        self.results = f"{prefix}:result"
        self.events = f"{prefix}:events"
        self.workers = f"{prefix}:workers"

    def result(self, job_id: str) -> str:
        return f"{self.results}:{job_id}"

    def marker(self, job_id: str) -> str:
        """Set by the bot when it hands a job to the broker; gone once the bot has the result."""
        return f"{self.prefix}:job:{job_id}"

    def claim(self, job_id: str) -> str:
        return f"{self.prefix}:claim:{job_id}"

    def done(self, job_id: str) -> str:
        return f"{self.prefix}:done:{job_id}"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    def attempts(self, job_id: str) -> str:
        return f"{self.prefix}:attempts:{job_id}"

    def worker(self, consumer: str) -> str:
        return f"{self.prefix}:worker:{consumer}"


def connection_kwargs(settings: RemoteSettings) -> dict[str, Any]:
    """Fail fast, retry once: a pooled connection that died with a Redis restart reconnects."""
    return {
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_timeout": 30.0,
        "socket_keepalive": True,
        "health_check_interval": 15,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
    }


def make_redis(settings: RemoteSettings) -> Redis:
    if not settings.redis_url:
        raise ValueError("IMAGINE_REDIS_URL is not set")
    return Redis.from_url(settings.redis_url, **connection_kwargs(settings))


def cancelling() -> bool:
    """True when this task is being cancelled. redis-py can turn a cancellation that lands
    mid-read into a ConnectionError; a retry loop must not swallow it, or shutdown hangs."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def retry_forever(
    what: str,
    operation: Callable[[], Awaitable[Any]],
    *,
    first_delay: float = 0.2,
    max_delay: float = 5.0,
) -> Any:
    """Run a Redis operation until it succeeds: results and acks must survive an outage."""
    delay = first_delay
    warned = False
    while True:
        try:
            return await operation()
        except REDIS_DOWN as exc:
            if cancelling():
                raise
            if not warned:
                logger.warning("%s: Redis unreachable (%s); retrying until it is back", what, exc)
                warned = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)


class DurableResultBackend(RedisAsyncResultBackend[Any]):
    """taskiq's Redis result backend, with first-result-wins writes that outlast an outage.

    ``SET NX``: when a redelivered job ran twice (a worker that was only cut off, not dead),
    the first stored result is the one the user gets; the second write changes nothing.
    """

    def __init__(self, settings: RemoteSettings, keys: RedisKeys) -> None:
        super().__init__(
            str(settings.redis_url),
            keep_results=True,
            result_ex_time=settings.result_ttl_s,
            serializer=JSONSerializer(),
            prefix_str=keys.results,
            **connection_kwargs(settings),
        )
        # task id -> whether this process's write was the first one (read by the middleware).
        self.written: dict[str, bool] = {}

    async def set_result(self, task_id: str, result: TaskiqResult[Any]) -> None:
        name = self._task_name(task_id)
        value = self.serializer.dumpb(result.model_dump(mode="json"))

        async def write() -> bool:
            async with Redis(connection_pool=self.redis_pool) as redis:
                return bool(await redis.set(name, value, ex=self.result_ex_time, nx=True))

        first = await retry_forever(f"saving result of {task_id}", write)
        self.written[task_id] = first
        if not first:
            logger.info("job %s: a result was already stored; this one is dropped", task_id)


class ResilientStreamBroker(RedisStreamBroker):
    """taskiq-redis's stream broker with a worker-side ``listen`` that holds up in production.

    Same stream, consumer group, message format, acks and ``idle_timeout`` as upstream
    ``RedisStreamBroker``; the read loop differs where taskiq-redis 1.2.4 falls short here:

    * it reclaims idle entries (XAUTOCLAIM) on *every* turn, first: upstream only reclaims
      after a read that returned new messages, so an idle worker never took over the job of a
      worker that was killed while the stream was quiet;
    * one entry per read or reclaim, so a worker holds only the job it is about to run;
    * a Redis restart does not end the worker: the loop waits with backoff and declares the
      consumer group again (a Redis that lost its data has none);
    * ``closing`` ends the loop within one read; redis-py can swallow a cancellation that lands
      mid-read, so shutdown must not depend on cancellation alone;
    * acks are retried until they land, so a finished job is not redelivered merely because
      Redis blinked at the wrong moment.
    """

    closing = False
    _reclaim_from = 0.0

    def hold_reclaim(self) -> None:
        """After a Redis outage every entry looks idle, live workers' too: reclaim nothing for
        one redelivery period, so the workers that are alive renew their entries first."""
        self._reclaim_from = time.monotonic() + self.idle_timeout / 1000

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:  # type: ignore[override]
        delay = 0.2
        stream, group, consumer = self.queue_name, self.consumer_group_name, self.consumer_name
        while not self.closing:
            try:
                async with Redis(connection_pool=self.connection_pool) as redis:
                    while not self.closing:
                        entries = []
                        if time.monotonic() >= self._reclaim_from:
                            _next, claimed, *_deleted = await redis.xautoclaim(
                                stream, group, consumer, min_idle_time=self.idle_timeout, count=1
                            )
                            entries = [(i, m) for i, m in claimed if m]  # trimmed ones: None
                        if not entries:
                            fetched = await redis.xreadgroup(
                                group, consumer, {stream: ">"}, count=1, block=self.block
                            )
                            entries = [e for _stream, batch in fetched or [] for e in batch]
                        else:
                            logger.warning(
                                "taking over stream entry %s: its worker stopped answering",
                                entries[0][0].decode(),
                            )
                        delay = 0.2
                        for entry_id, fields in entries:
                            yield AckableMessage(
                                data=fields[b"data"],
                                ack=self._durable(self._ack_generator(entry_id, stream)),
                            )
            except (*REDIS_DOWN, ResponseError) as exc:
                if cancelling():
                    raise
                self.hold_reclaim()
                logger.warning("job stream unavailable (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                with contextlib.suppress(*REDIS_DOWN):
                    await self._declare_consumer_group()

    @staticmethod
    def _durable(ack: Callable[[], Awaitable[None] | None]) -> Callable[[], Awaitable[None]]:
        async def durable_ack() -> None:
            async def once() -> None:
                outcome = ack()
                if outcome is not None:
                    await outcome

            await retry_forever("acknowledging a job", once)

        return durable_ack


class JobEventsMiddleware(TaskiqMiddleware):
    """After a result is saved, tell the bot at once (it also polls, in case this is lost)."""

    def __init__(self, redis: Redis, keys: RedisKeys, worker: str) -> None:
        super().__init__()
        self.redis = redis
        self.keys = keys
        self.worker = worker

    async def post_save(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        backend = self.broker.result_backend
        written = getattr(backend, "written", {}).pop(message.task_id, True)
        event = {"type": "done", "job_id": message.task_id, "worker": self.worker}
        event["written"] = written
        try:
            await self.redis.publish(self.keys.events, json.dumps(event))
        except REDIS_DOWN as exc:
            logger.debug("done event for %s not published: %s", message.task_id, exc)


def make_broker(
    settings: RemoteSettings, keys: RedisKeys, consumer_name: str | None = None
) -> ResilientStreamBroker:
    """The one taskiq broker configuration both sides use.

    One message per read and one per reclaim: a worker takes only the job it is about to run,
    so a job never waits behind a busy worker while another one is idle.
    """
    if not settings.redis_url:
        raise ValueError("IMAGINE_REDIS_URL is not set")
    broker = ResilientStreamBroker(
        settings.redis_url,
        queue_name=keys.stream,
        consumer_group_name=keys.group,
        consumer_name=consumer_name,
        # "0", not "$": a group declared after jobs were added (Redis lost its data and the
        # bot re-sent them) still sees them; duplicates are skipped by the job key.
        consumer_id="0",
        xread_block=1000,
        xread_count=1,
        maxlen=settings.stream_maxlen,
        approximate=True,
        idle_timeout=int(settings.redeliver_after_s * 1000),
        unacknowledged_batch_size=1,
        **{**connection_kwargs(settings), "socket_timeout": 10.0},
    )
    return broker.with_result_backend(DurableResultBackend(settings, keys))


def parse_outcome(job_id: str, result: TaskiqResult[Any]) -> JobResult | JobFailed:
    """Read what a worker stored: ``{"ok": true, "result": ...}`` or ``{"ok": false, ...}``."""
    value = result.return_value
    if result.is_err or not isinstance(value, dict):
        logger.error("job %s: worker stored an error result: %s", job_id, result.error)
        return JobFailed(FailureKind.ERROR, ERROR_MESSAGE)
    try:
        if value.get("ok"):
            return JobResult.from_dict(value["result"])
        return JobFailed.from_dict(value["error"])
    except (KeyError, TypeError, ValueError):
        logger.exception("job %s: unreadable result", job_id)
        return JobFailed(FailureKind.ERROR, ERROR_MESSAGE)


def worker_info(data: dict[str, Any]) -> WorkerInfo:
    return WorkerInfo(
        name=str(data.get("name", "?")),
        gpu=str(data.get("gpu", "unknown")),
        memory_gb=float(data.get("memory_gb") or 0.0),
        memory_mode=str(data.get("memory_mode", "unknown")),
        model=str(data.get("model", "unknown")),
        current_job=data.get("current_job"),
        last_seen=float(data.get("last_seen") or 0.0),
        jobs_done=int(data.get("jobs_done") or 0),
    )


async def read_workers(redis: Redis, keys: RedisKeys, ttl_s: float) -> list[dict[str, Any]]:
    """Heartbeats of the workers alive now, oldest first (shared by the bot and the tests)."""
    now = time.time()
    names = await redis.zrangebyscore(keys.workers, now - ttl_s, "+inf")
    if not names:
        return []
    raw = await redis.mget([keys.worker(n.decode()) for n in names])
    workers = []
    for blob in raw:
        if blob:
            with contextlib.suppress(ValueError):
                workers.append(json.loads(blob))
    return workers


class RemoteHandle:
    """A submitted job; cancelling the awaiter does not cancel the job."""

    def __init__(self, job_id: str, future: asyncio.Future[JobResult]) -> None:
        self.job_id = job_id
        self._future = future

    async def result(self) -> JobResult:
        return await asyncio.shield(self._future)


@dataclasses.dataclass(eq=False)
class _RemoteJob:
    request: JobRequest
    future: asyncio.Future[JobResult]
    on_progress: ProgressCallback | None
    submitted_at: float
    # waiting (bot's FairQueue) -> dispatching (being written to Redis) -> dispatched -> running
    state: str = "waiting"
    worker: str | None = None
    attempt: int = 0
    completing: bool = False


class RedisBackend:
    """``ImageBackend`` that sends jobs to ``python -m engine.worker`` processes through Redis."""

    def __init__(
        self,
        settings: RemoteSettings | None = None,
        engine_settings: EngineSettings | None = None,
    ) -> None:
        self.settings = settings or RemoteSettings()
        if not self.settings.redis_url:
            raise ValueError("RedisBackend needs IMAGINE_REDIS_URL")
        self.engine_settings = engine_settings or EngineSettings()
        self.keys = RedisKeys(self.settings.redis_prefix)
        self._waiting: FairQueue[_RemoteJob] = FairQueue()
        self._jobs: dict[str, _RemoteJob] = {}
        self._in_flight: dict[str, _RemoteJob] = {}
        self._workers: list[dict[str, Any]] = []
        self._workers_read_at = 0.0
        self._last_worker_seen = 0.0
        self._redis_ok = False
        self._redis: Redis | None = None
        self._broker: ResilientStreamBroker | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._closing = False

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Connect. A Redis that is down now is not fatal: requests are refused until it is up."""
        if self._started:
            return
        self._redis = make_redis(self.settings)
        self._broker = make_broker(
            self.settings, self.keys, consumer_name=f"bot-{socket.gethostname()}"
        )
        self._wake = asyncio.Event()
        self._closing = False
        try:
            await self._broker.startup()
            await self._redis.ping()
            self._set_redis_ok(True)
        except REDIS_DOWN as exc:
            self._set_redis_ok(False, exc)
        logger.info(
            "image jobs go to GPU workers through %s (prefix %r)",
            redact_url(str(self.settings.redis_url)),
            self.keys.prefix,
        )
        self._started = True
        self._tasks = [
            asyncio.create_task(self._dispatch_loop(), name="imagine-dispatch"),
            asyncio.create_task(self._events_loop(), name="imagine-events"),
            asyncio.create_task(self._reconcile_loop(), name="imagine-reconcile"),
        ]

    async def close(self) -> None:
        """Stop dispatching. Jobs already on workers keep running there; their results wait in
        Redis for the next bot process, which picks them up when it re-submits the same ids."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        while (item := self._waiting.pop()) is not None:
            job = item[1]
            self._jobs.pop(job.request.job_id, None)
            self._settle(job, JobFailed(FailureKind.UNAVAILABLE, "The image engine shut down."))
        for job in list(self._in_flight.values()):
            if not job.future.done():
                job.future.cancel()
        self._in_flight.clear()
        self._jobs.clear()
        if self._broker is not None:
            with contextlib.suppress(*REDIS_DOWN):
                await self._broker.shutdown()
        if self._redis is not None:
            with contextlib.suppress(*REDIS_DOWN):
                await self._redis.aclose()
        self._started = False

    # ------------------------------------------------------------------ queue API
    async def submit(
        self, request: JobRequest, on_progress: ProgressCallback | None = None
    ) -> RemoteHandle:
        existing = self._jobs.get(request.job_id)
        if existing is not None:
            if existing.on_progress is None:
                existing.on_progress = on_progress
            return RemoteHandle(request.job_id, existing.future)
        if not self._started or self._closing or self._redis is None:
            raise JobFailed(FailureKind.UNAVAILABLE, UNAVAILABLE_MESSAGE)
        redis = self._redis
        keys = self.keys
        job_id = request.job_id
        try:
            pipe = redis.pipeline(transaction=False)
            pipe.exists(keys.result(job_id))
            pipe.exists(keys.marker(job_id))
            pipe.get(keys.claim(job_id))
            pipe.exists(keys.done(job_id))
            has_result, has_marker, claim, done = await pipe.execute()
            workers = await self._refresh_workers()
            self._set_redis_ok(True)
        except REDIS_DOWN as exc:
            self._set_redis_ok(False, exc)
            raise JobFailed(FailureKind.UNAVAILABLE, UNAVAILABLE_MESSAGE) from None

        existing = self._jobs.get(job_id)  # the same id submitted again while we awaited
        if existing is not None:
            return RemoteHandle(job_id, existing.future)
        loop = asyncio.get_running_loop()
        # A job the previous bot process handed out (this is a re-submit after a restart):
        # follow it instead of running it again.
        if has_result or has_marker or claim:
            job = _RemoteJob(request, loop.create_future(), on_progress, time.time())
            job.state = "running" if claim else "dispatched"
            job.worker = claim.decode() if claim else None
            self._jobs[job_id] = job
            self._in_flight[job_id] = job
            logger.info("job %s is already with the workers; following it", job_id)
            if has_result:
                asyncio.create_task(self._complete(job_id))  # noqa: RUF006 - tracked by _jobs
            return RemoteHandle(job_id, job.future)

        if not workers and time.time() - self._last_worker_seen > self.settings.worker_grace_s:
            logger.warning("job %s refused: no image worker is online", job_id)
            raise JobFailed(FailureKind.UNAVAILABLE, UNAVAILABLE_MESSAGE)
        mine = self._waiting.count_for(request.user_id) + sum(
            1 for j in self._in_flight.values() if j.request.user_id == request.user_id
        )
        if mine >= self.engine_settings.max_queued_per_user:
            raise JobFailed(
                FailureKind.QUEUE_FULL,
                f"You already have {mine} images waiting; wait for one to finish.",
            )
        if len(self._waiting) >= self.engine_settings.max_queue:
            raise JobFailed(
                FailureKind.QUEUE_FULL, "The queue is full right now; try again in a minute."
            )
        if done:
            # The last bot process received a result but never recorded it: run it again.
            with contextlib.suppress(*REDIS_DOWN):
                await redis.delete(keys.done(job_id))
        job = _RemoteJob(request, loop.create_future(), on_progress, time.time())
        self._jobs[job_id] = job
        self._waiting.push(request.user_id, job_id, job)
        self._poke()
        return RemoteHandle(job_id, job.future)

    async def position(self, job_id: str) -> int | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.state == "running":
            return 0
        if job.state in ("dispatching", "dispatched"):
            return 1
        place = self._waiting.position(job_id)
        if place is None:
            return None
        return place + len(self._in_flight)

    async def cancel(self, job_id: str) -> bool:
        job = self._waiting.remove(job_id)
        if job is not None:
            self._jobs.pop(job_id, None)
            self._settle(job, JobFailed(FailureKind.CANCELLED, "The generation was cancelled."))
            return True
        job = self._in_flight.get(job_id)
        if job is None or self._redis is None:
            return False
        # The worker sees the flag at its next step (or before it starts) and reports the job
        # as cancelled; the handle resolves with that report, like the in-process backend.
        try:
            await self._redis.set(self.keys.cancel(job_id), b"1", ex=self.settings.result_ttl_s)
        except REDIS_DOWN as exc:
            self._set_redis_ok(False, exc)
            return False
        return True

    async def status(self) -> EngineStatus:
        note = None
        try:
            workers = await self._refresh_workers(max_age=0.0)
            self._set_redis_ok(True)
        except REDIS_DOWN as exc:
            self._set_redis_ok(False, exc)
            workers = []
            note = "Redis is unreachable: new images are refused until it is back."
        infos = tuple(worker_info(w) for w in workers)
        ready = [w for w in workers if w.get("state") in ("idle", "busy")]
        if note is None and not ready:
            loading = [w for w in workers if w.get("state") == "loading"]
            note = (
                f"{len(loading)} worker(s) loading the model."
                if loading
                else "No image worker is online."
            )
        per_step = [float(w["sec_per_step"]) for w in ready if w.get("sec_per_step")]
        first = ready[0] if ready else (workers[0] if workers else {})
        running = tuple(j.request.job_id for j in self._in_flight.values() if j.state == "running")
        gpus: dict[str, int] = {}
        for w in ready:
            gpus[str(w.get("gpu", "?"))] = gpus.get(str(w.get("gpu", "?")), 0) + 1
        gpu = ", ".join(f"{n}× {name}" for name, n in gpus.items()) or "no worker online"
        return EngineStatus(
            backend="redis",
            ready=self._redis_ok and bool(ready),
            model=str(first.get("model", self.engine_settings.model)),
            memory_mode=str(first.get("memory_mode", "unknown")),
            gpu=gpu,
            queue_length=len(self._waiting)
            + sum(1 for j in self._in_flight.values() if j.state != "running"),
            running=running,
            mean_sec_per_step=sum(per_step) / len(per_step) if per_step else None,
            fast_available=any(bool(w.get("fast_available")) for w in ready),
            workers=infos,
            note=note,
        )

    # ----------------------------------------------------------------- internals
    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _set_redis_ok(self, ok: bool, exc: BaseException | None = None) -> None:
        """Log transitions only: an outage logs one line, not one per retry."""
        if ok and not self._redis_ok:
            logger.info("Redis is reachable")
        elif not ok and (self._redis_ok or not self._started):
            logger.warning(
                "Redis is unreachable (%s); new images are refused until it is back", exc
            )
        self._redis_ok = ok

    async def _refresh_workers(self, max_age: float | None = None) -> list[dict[str, Any]]:
        """Live heartbeats, re-read when older than ``max_age`` (default: half a heartbeat)."""
        if max_age is None:
            max_age = self.settings.heartbeat_s / 2
        now = time.monotonic()
        if now - self._workers_read_at < max_age:
            return self._workers
        assert self._redis is not None
        workers = await read_workers(self._redis, self.keys, self.settings.worker_ttl_s)
        newest = await self._redis.zrevrange(self.keys.workers, 0, 0, withscores=True)
        if newest:
            self._last_worker_seen = max(self._last_worker_seen, float(newest[0][1]))
        self._workers = workers
        self._workers_read_at = now
        return workers

    def _free_slots(self) -> int:
        capacity = sum(int(w.get("capacity") or 0) for w in self._workers)
        return capacity - len(self._in_flight)

    async def _dispatch_loop(self) -> None:
        assert self._wake is not None
        delay = 0.2
        while not self._closing:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives just as the event fires, and close() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.heartbeat_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._dispatch()
                delay = 0.2
            except REDIS_DOWN as exc:
                self._set_redis_ok(False, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._poke()
            except Exception:
                logger.exception("dispatcher error")
                await asyncio.sleep(1.0)

    async def _dispatch(self) -> None:
        for job in [j for j in self._in_flight.values() if j.state == "dispatching"]:
            await self._kick(job)
        if not len(self._waiting):
            return
        await self._refresh_workers(max_age=0.0)
        self._set_redis_ok(True)
        while self._free_slots() > 0:
            item = self._waiting.pop()
            if item is None:
                return
            job_id, job = item
            job.state = "dispatching"
            self._in_flight[job_id] = job
            await self._kick(job)

    async def _kick(self, job: _RemoteJob) -> None:
        """Hand one job to the broker. Raises on a Redis error; the job stays "dispatching"
        and is tried again first, so an outage delays it but never drops it."""
        assert self._broker is not None and self._redis is not None
        job_id = job.request.job_id
        meta = {
            "submitted_at": job.submitted_at,
            "dispatched_at": time.time(),
            "attempt": job.attempt + 1,
        }
        kicker: AsyncKicker[Any, Any] = AsyncKicker(TASK_NAME, self._broker, {})
        await kicker.with_task_id(job_id).kiq(job.request.to_dict(), meta)
        job.attempt += 1
        # After the XADD: if the bot dies in between, a re-submit sends it again and the
        # worker skips the duplicate; the other order could leave a marker with no message.
        await self._redis.set(
            self.keys.marker(job_id),
            json.dumps({"user_id": job.request.user_id, **meta}),
            ex=self.settings.result_ttl_s,
        )
        if job.state == "dispatching":
            job.state = "dispatched"
        logger.info("job %s handed to the workers (attempt %d)", job_id, job.attempt)

    async def _events_loop(self) -> None:
        """Progress, starts and completions that workers publish; reconnects after outages."""
        assert self._redis is not None
        delay = 0.2
        while not self._closing:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.keys.events)
                delay = 0.2
                # Anything published while we were away is found by the reconcile loop.
                self._poke()
                # redis-py's get_message can swallow a cancellation; the flag ends the loop.
                while not self._closing:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._on_event(message["data"])
            except REDIS_DOWN as exc:
                self._set_redis_ok(False, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(*REDIS_DOWN, RuntimeError):
                    await pubsub.aclose()

    def _on_event(self, data: bytes) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            return
        kind = event.get("type")
        if kind == "worker":
            self._workers_read_at = 0.0
            self._poke()
            return
        job = self._in_flight.get(str(event.get("job_id")))
        if job is None:
            return
        if kind in ("started", "progress"):
            if job.state != "running":
                job.state = "running"
            job.worker = event.get("worker") or job.worker
        if kind == "progress" and job.on_progress is not None and not job.future.done():
            try:
                progress = Progress.from_dict(
                    {k: event[k] for k in ("job_id", "step", "total", "elapsed_s", "sec_per_step")}
                )
                job.on_progress(progress)
            except Exception:
                logger.exception("progress callback for job %s failed", job.request.job_id)
        elif kind == "done":
            asyncio.create_task(self._complete(job.request.job_id))  # noqa: RUF006

    async def _reconcile_loop(self) -> None:
        """Catch what pub/sub can miss: finished jobs, and jobs a data-losing Redis forgot."""
        interval = min(1.0, self.settings.heartbeat_s)
        while not self._closing:
            await asyncio.sleep(interval)
            jobs = [j for j in self._in_flight.values() if j.state in ("dispatched", "running")]
            if not jobs or self._redis is None:
                continue
            try:
                pipe = self._redis.pipeline(transaction=False)
                for job in jobs:
                    job_id = job.request.job_id
                    pipe.exists(self.keys.result(job_id))
                    pipe.exists(self.keys.marker(job_id), self.keys.claim(job_id))
                flags = await pipe.execute()
                self._set_redis_ok(True)
            except REDIS_DOWN as exc:
                self._set_redis_ok(False, exc)
                continue
            for index, job in enumerate(jobs):
                has_result, known = flags[2 * index], flags[2 * index + 1]
                if has_result:
                    await self._complete(job.request.job_id)
                elif not known and job.request.job_id in self._in_flight:
                    logger.warning(
                        "job %s vanished from Redis (restarted without persistence?); sending "
                        "it again",
                        job.request.job_id,
                    )
                    job.state = "dispatching"
                    self._poke()

    async def _complete(self, job_id: str) -> None:
        job = self._in_flight.get(job_id)
        if job is None or job.completing:
            return
        job.completing = True
        assert self._broker is not None and self._redis is not None
        try:
            result = await self._broker.result_backend.get_result(job_id)
        except ResultIsMissingError:
            job.completing = False
            return
        except REDIS_DOWN as exc:
            job.completing = False
            self._set_redis_ok(False, exc)
            return
        outcome = parse_outcome(job_id, result)
        self._in_flight.pop(job_id, None)
        self._jobs.pop(job_id, None)
        self._settle(job, outcome)
        self._poke()
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.expire(self.keys.result(job_id), self.settings.result_keep_s)
            pipe.set(self.keys.done(job_id), b"1", ex=self.settings.result_ttl_s)
            pipe.delete(self.keys.marker(job_id), self.keys.cancel(job_id))
            await pipe.execute()
        except REDIS_DOWN as exc:
            logger.debug("cleanup after job %s postponed: %s", job_id, exc)

    @staticmethod
    def _settle(job: _RemoteJob, outcome: JobResult | JobFailed) -> None:
        if job.future.done():
            return
        if isinstance(outcome, JobFailed):
            job.future.set_exception(outcome)
            job.future.exception()  # retrieved: a refused job nobody awaits is not an error
        else:
            job.future.set_result(outcome)


# ---------------------------------------------------------------------- operator CLI
def _build_parser() -> Any:
    import argparse

    from engine.presets import ASPECTS, BUILTIN_STYLES, DEFAULT_ASPECT, DEFAULT_STYLE

    parser = argparse.ArgumentParser(
        prog="python -m engine.remote",
        description="Check the GPU workers behind IMAGINE_REDIS_URL from any machine, without "
        "Discord: list them, or send one test image through them.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="Redis health, workers, what they run")
    status.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long for a worker to be ready (they load the model first)",
    )
    gen = sub.add_parser("generate", help="render one image on a worker, like /imagine does")
    gen.add_argument("prompt")
    gen.add_argument("--style", default=DEFAULT_STYLE, choices=sorted(BUILTIN_STYLES))
    gen.add_argument("--aspect", default=DEFAULT_ASPECT, choices=list(ASPECTS))
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--mode", default=None, choices=[str(m) for m in Mode])
    gen.add_argument("--out", required=True, help="where to write the PNG")
    gen.add_argument("--timeout", type=float, default=900.0, help="give up after this (s)")
    return parser


def _print_status(status: EngineStatus) -> None:
    print(f"backend: redis   ready: {'yes' if status.ready else 'no'}")
    if status.note:
        print(f"note: {status.note}")
    print(f"queue: {status.queue_length} waiting, {len(status.running)} rendering")
    if status.mean_sec_per_step:
        print(f"seconds per step (mean of workers): {status.mean_sec_per_step:.3f}")
    for worker in status.workers:
        if worker.memory_mode == "loading":
            print(f"  {worker.name}: loading the model")
            continue
        job = f"rendering {worker.current_job}" if worker.current_job else "idle"
        images = "1 image" if worker.jobs_done == 1 else f"{worker.jobs_done} images"
        print(
            f"  {worker.name}: {worker.gpu} ({worker.memory_gb:g} GB, {worker.memory_mode}), "
            f"{images}, {job}"
        )


async def _cli(args: Any) -> int:
    import sys
    import uuid

    from engine.presets import BUILTIN_STYLES

    backend = RedisBackend()
    await backend.start()
    try:
        if args.command == "status":
            status = await backend.status()
            deadline = time.monotonic() + args.wait
            while not status.ready and time.monotonic() < deadline:
                await asyncio.sleep(1.0)
                status = await backend.status()
            _print_status(status)
            return 0 if status.ready else 1
        request = JobRequest(
            job_id=f"cli-{uuid.uuid4().hex[:12]}",
            user_id=0,
            prompt=args.prompt,
            style=BUILTIN_STYLES[args.style],
            aspect=args.aspect,
            seed=args.seed,
            mode=Mode(args.mode) if args.mode else backend.engine_settings.default_mode,
        )

        def show(progress: Progress) -> None:
            print(
                f"\r  step {progress.step}/{progress.total} ({progress.percent}%), "
                f"eta {progress.eta_s:.0f}s   ",
                end="",
                flush=True,
            )

        try:
            handle = await backend.submit(request, show)
            async with asyncio.timeout(args.timeout):
                result = await handle.result()
        except JobFailed as exc:
            print(f"\nerror: {exc.user_message}", file=sys.stderr)
            return 1
        except TimeoutError:
            await backend.cancel(request.job_id)
            print(f"\nerror: no image after {args.timeout:.0f}s", file=sys.stderr)
            return 1
        await asyncio.to_thread(Path(args.out).write_bytes, result.png)
        print(
            f"\nwrote {args.out} ({result.width}x{result.height}, seed {result.seed}, "
            f"{result.mode} mode, {result.steps} steps) on {result.worker} in "
            f"{result.run_s:.2f}s after {result.queued_s:.2f}s in the queue"
        )
        return 0
    finally:
        await backend.close()


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = RemoteSettings()
    if not settings.redis_url:
        print("error: set IMAGINE_REDIS_URL (e.g. redis://127.0.0.1:6379/0)")
        return 2
    return asyncio.run(_cli(args))


if __name__ == "__main__":
    raise SystemExit(main())
