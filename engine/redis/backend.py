"""``RedisBackend``: the bot's ``ImageBackend`` that hands jobs to GPU workers through Redis.

What it adds on top of taskiq is what a Discord bot needs:

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
* Untrusted messages. An event, heartbeat or result this version cannot read is logged and
  skipped (``engine.redis.wire``); no loop ends because of one.

The background loops (dispatch, events, reconcile) are in ``engine.redis.loops``. No torch on
this path: the bot imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

from redis.asyncio import Redis

from engine.admission import CANCELLED_MESSAGE, SHUT_DOWN_MESSAGE, FutureHandle, admit, settle
from engine.contract import (
    CAPABILITY_EDIT,
    CAPABILITY_GENERATE,
    EngineStatus,
    FailureKind,
    JobFailed,
    JobRequest,
    ProgressCallback,
)
from engine.fairqueue import FairQueue
from engine.redis.broker import ResilientStreamBroker, make_broker
from engine.redis.connection import REDIS_DOWN, make_redis
from engine.redis.jobs import RemoteJob
from engine.redis.keys import RedisKeys
from engine.redis.loops import JobRouting
from engine.redis.settings import RemoteSettings, redact_url
from engine.redis.wire import Heartbeat, WorkerState
from engine.settings import EngineSettings

logger = logging.getLogger(__name__)

UNAVAILABLE_MESSAGE = (
    "Image workers are unavailable right now — nothing was charged. Please try again in a minute."
)
REDIS_DOWN_NOTE = "Redis is unreachable: new images are refused until it is back."
NO_EDIT_WORKER_MESSAGE = (
    "No worker can edit right now — nothing was charged. Please try again later."
)


class RedisBackend(JobRouting):
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
        self._waiting: FairQueue[RemoteJob] = FairQueue()
        self._jobs: dict[str, RemoteJob] = {}
        self._in_flight: dict[str, RemoteJob] = {}
        self._workers: list[Heartbeat] = []
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
        self._broker = make_broker(  # every capability: each job stream's group exists
            self.settings,
            self.keys,
            consumer_name=f"bot-{socket.gethostname()}",
            capabilities=(CAPABILITY_GENERATE, CAPABILITY_EDIT),
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
            settle(job.future, JobFailed(FailureKind.UNAVAILABLE, SHUT_DOWN_MESSAGE))
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
    ) -> FutureHandle:
        existing = self._jobs.get(request.job_id)
        if existing is not None:
            if existing.on_progress is None:
                existing.on_progress = on_progress
            return FutureHandle(request.job_id, existing.future)
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
            return FutureHandle(job_id, existing.future)
        loop = asyncio.get_running_loop()
        # A job the previous bot process handed out (this is a re-submit after a restart):
        # follow it instead of running it again.
        if has_result or has_marker or claim:
            job = RemoteJob(request, loop.create_future(), on_progress, time.time())
            job.state = "running" if claim else "dispatched"
            job.worker = claim.decode(errors="replace") if claim else None
            self._extend_deadline(job)
            self._jobs[job_id] = job
            self._in_flight[job_id] = job
            logger.info("job %s is already with the workers; following it", job_id)
            if has_result:
                asyncio.create_task(self._complete(job_id))  # noqa: RUF006 - tracked by _jobs
            return FutureHandle(job_id, job.future)

        if not workers and time.time() - self._last_worker_seen > self.settings.worker_grace_s:
            logger.warning("job %s refused: no image worker is online", job_id)
            raise JobFailed(FailureKind.UNAVAILABLE, UNAVAILABLE_MESSAGE)
        if request.needs == CAPABILITY_EDIT and not any(
            w.state.ready and w.can(CAPABILITY_EDIT) for w in workers
        ):
            logger.warning("job %s refused: no edit-capable worker is online", job_id)
            raise JobFailed(FailureKind.UNAVAILABLE, NO_EDIT_WORKER_MESSAGE)
        mine = self._waiting.count_for(request.user_id) + sum(
            1 for j in self._in_flight.values() if j.request.user_id == request.user_id
        )
        admit(self.engine_settings, users_jobs=mine, waiting=len(self._waiting))
        if done:
            # The last bot process received a result but never recorded it: run it again.
            with contextlib.suppress(*REDIS_DOWN):
                await redis.delete(keys.done(job_id))
        job = RemoteJob(request, loop.create_future(), on_progress, time.time())
        self._jobs[job_id] = job
        self._waiting.push(request.user_id, job_id, job, group=request.needs)
        self._poke()
        return FutureHandle(job_id, job.future)

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
            settle(job.future, JobFailed(FailureKind.CANCELLED, CANCELLED_MESSAGE))
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
            note = REDIS_DOWN_NOTE
        ready = [w for w in workers if w.state.ready]
        if note is None and not ready:
            loading = sum(1 for w in workers if w.state == WorkerState.LOADING)
            note = f"{loading} worker(s) loading the model." if loading else None
            note = note or "No image worker is online."
        per_step = [w.sec_per_step for w in ready if w.sec_per_step]
        first = ready[0] if ready else (workers[0] if workers else None)
        gpus: dict[str, int] = {}
        for w in ready:
            gpus[w.gpu] = gpus.get(w.gpu, 0) + 1
        in_flight = list(self._in_flight.values())
        return EngineStatus(
            backend="redis",
            ready=self._redis_ok and bool(ready),
            model=first.model if first else self.engine_settings.model,
            memory_mode=first.memory_mode if first else "unknown",
            gpu=", ".join(f"{n}× {name}" for name, n in gpus.items()) or "no worker online",
            queue_length=len(self._waiting) + sum(1 for j in in_flight if j.state != "running"),
            running=tuple(j.request.job_id for j in in_flight if j.state == "running"),
            mean_sec_per_step=sum(per_step) / len(per_step) if per_step else None,
            fast_available=any(w.fast_available for w in ready),
            workers=tuple(w.info() for w in workers),
            note=note,
            queued_ceiling_per_user=self.engine_settings.queued_ceiling_per_user,
            resident_models=tuple(dict.fromkeys(m for w in ready for m in w.resident_models)),
            capabilities=tuple(
                c for c in (CAPABILITY_GENERATE, CAPABILITY_EDIT) if any(w.can(c) for w in ready)
            ),
        )
