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

Three background loops move each ``RemoteJob`` (``engine.redis.jobs``) on from where another
left it — waiting, dispatched, running, completing: the dispatcher hands a waiting job to the
broker when a worker slot is free, the events loop turns worker events into progress callbacks
and completions, and the reconcile loop catches what pub/sub missed (and jobs a data-losing
Redis forgot). They share the job table, the slot count and the worker view on one event loop
without locks, so they are methods of this one class.

Routing by task. Each job goes to the stream of its task (``RedisKeys.stream_for``:
text-to-image to the main stream, edits to the edit stream) and only workers that can run it
read that stream, so a worker without the edit model never takes an edit job: Redis itself
enforces it, whoever dispatches. The dispatcher keeps the accounting honest on top: it hands
out an edit job only while an edit-capable worker has a free slot (a slot is not free while a
job it took runs there), and otherwise lets text-to-image jobs behind it go first
(``FairQueue.pop(only=...)``), so an edit waiting for the one edit worker never holds back
images other workers could make. This is simpler than assigning jobs to named workers (no
reassignment when a worker dies: the stream's own redelivery still works) and needs nothing
new on the worker side but reading one more stream.

No torch on this path: the bot imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

from redis.asyncio import Redis
from taskiq.kicker import AsyncKicker
from taskiq_redis.exceptions import ResultIsMissingError

from engine.admission import (
    CANCELLED_MESSAGE,
    SHUT_DOWN_MESSAGE,
    FutureHandle,
    check_room,
    settle,
)
from engine.contract import (
    TASK_EDIT,
    TASK_GENERATE,
    EngineStatus,
    FailureKind,
    JobFailed,
    JobRequest,
    JobResult,
    ProgressCallback,
)
from engine.fairqueue import FairQueue
from engine.redis.broker import ResilientStreamBroker, make_broker
from engine.redis.connection import REDIS_DOWN, make_redis
from engine.redis.jobs import RemoteJob, parse_outcome
from engine.redis.keys import TASK_NAME, RedisKeys
from engine.redis.presence import read_workers
from engine.redis.settings import RemoteSettings, redact_url
from engine.redis.wire import (
    DoneEvent,
    Event,
    Heartbeat,
    JobMessage,
    Marker,
    ProgressEvent,
    StartedEvent,
    WireError,
    WorkerEvent,
    WorkerState,
    brief,
    log_skipped,
    parse_event,
)
from engine.runner import ERROR_MESSAGE
from engine.settings import EngineSettings

logger = logging.getLogger(__name__)

UNAVAILABLE_MESSAGE = (
    "Image workers are unavailable right now — nothing was charged. Please try again in a minute."
)
REDIS_DOWN_NOTE = "Redis is unreachable: new images are refused until it is back."
NO_EDIT_WORKER_MESSAGE = (
    "No worker can edit right now — nothing was charged. Please try again later."
)
NO_TASK_WORKER_MESSAGE = (
    "No worker can run this kind of job right now — nothing was charged. Please try again later."
)
NO_ANSWER_MESSAGE = (
    "No GPU worker answered for this image in time, so it was given up — nothing was charged. "
    "Please try again."
)
# The tasks this bot knows: each one's stream gets its consumer group at start.
KNOWN_TASKS = (TASK_GENERATE, TASK_EDIT)


class RedisBackend:
    """``ImageBackend`` that sends jobs to ``python -m engine.worker`` processes through Redis."""

    def __init__(self, settings: RemoteSettings, engine_settings: EngineSettings) -> None:
        self.settings = settings
        if not self.settings.redis_url:
            raise ValueError("RedisBackend needs IMAGINE_REDIS_URL")
        self.engine_settings = engine_settings
        self.keys = RedisKeys(self.settings.redis_prefix)
        self._waiting: FairQueue[RemoteJob] = FairQueue()
        self._jobs: dict[str, RemoteJob] = {}  # every job this process follows, by id
        self._in_flight: dict[str, RemoteJob] = {}  # handed to the broker (or being handed)
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
            capabilities=KNOWN_TASKS,
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
        if request.task != TASK_GENERATE and not any(
            w.state.ready and w.can(request.task) for w in workers
        ):
            logger.warning("job %s refused: no worker online runs %r", job_id, request.task)
            why = NO_EDIT_WORKER_MESSAGE if request.task == TASK_EDIT else NO_TASK_WORKER_MESSAGE
            raise JobFailed(FailureKind.UNAVAILABLE, why)
        mine = self._waiting.count_for(request.user_id) + sum(
            1 for j in self._in_flight.values() if j.request.user_id == request.user_id
        )
        check_room(self.engine_settings, users_jobs=mine, waiting=len(self._waiting))
        if done:
            # The last bot process received a result but never recorded it: run it again.
            with contextlib.suppress(*REDIS_DOWN):
                await redis.delete(keys.done(job_id))
        job = RemoteJob(request, loop.create_future(), on_progress, time.time())
        self._jobs[job_id] = job
        self._waiting.push(request.user_id, job_id, job, group=request.task)
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
            capabilities=tuple(dict.fromkeys(t for w in ready for t in w.capabilities)),
        )

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

    async def _refresh_workers(self, max_age: float | None = None) -> list[Heartbeat]:
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

    def _extend_deadline(self, job: RemoteJob) -> None:
        """Give the job a fresh answer window: its GPU deadline plus ``answer_margin_s``."""
        budget = job.request.deadline_s or self.engine_settings.job_timeout_s
        job.answer_by = time.monotonic() + budget + self.settings.answer_margin_s

    def _free_slots(self) -> int:
        return sum(w.capacity for w in self._workers) - len(self._in_flight)

    def _free_slots_for(self, capability: str) -> int:
        """Free slots of the workers that can run ``capability``: their capacity, less the
        jobs that need it and the jobs known to run on one of them."""
        capable = {w.name for w in self._workers if w.can(capability)}
        taken = sum(
            1
            for j in self._in_flight.values()
            if j.request.task == capability or (j.worker is not None and j.worker in capable)
        )
        capacity = sum(w.capacity for w in self._workers if w.name in capable)
        return min(capacity - taken, self._free_slots())

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
            # A job goes out only while a worker that runs its task is free; the jobs behind
            # it that a free worker can run go first meanwhile.
            tasks = {TASK_GENERATE, *(t for w in self._workers for t in w.capabilities)}
            only = tuple(t for t in sorted(tasks) if self._free_slots_for(t) > 0)
            item = self._waiting.pop(only=only)
            if item is None:
                return
            job_id, job = item
            job.state = "dispatching"
            self._in_flight[job_id] = job
            await self._kick(job)

    async def _kick(self, job: RemoteJob) -> None:
        """Hand one job to the broker. Raises on a Redis error; the job stays "dispatching"
        and is tried again first, so an outage delays it but never drops it."""
        assert self._broker is not None and self._redis is not None
        job_id = job.request.job_id
        message = JobMessage(
            request=job.request,
            submitted_at=job.submitted_at,
            dispatched_at=time.time(),
            attempt=job.attempt + 1,
        )
        labels: dict[str, str] = {}
        if job.request.task != TASK_GENERATE:  # to the stream only capable workers read
            labels["queue_name"] = self.keys.stream_for(job.request.task)
        kicker: AsyncKicker[[dict[str, object]], dict[str, object]] = AsyncKicker(
            TASK_NAME, self._broker, labels
        )
        await kicker.with_task_id(job_id).kiq(message.document())
        job.attempt += 1
        # After the XADD: if the bot dies in between, a re-submit sends it again and the
        # worker skips the duplicate; the other order could leave a marker with no message.
        marker = Marker(
            user_id=job.request.user_id,
            submitted_at=message.submitted_at,
            dispatched_at=message.dispatched_at,
            attempt=message.attempt,
        )
        await self._redis.set(
            self.keys.marker(job_id), marker.dumps(), ex=self.settings.result_ttl_s
        )
        if job.state == "dispatching":
            job.state = "dispatched"
        self._extend_deadline(job)
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
                        self._on_event_safely(message.get("data"))
            except REDIS_DOWN as exc:
                self._set_redis_ok(False, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception:  # a bug must not silence progress and completions until restart
                logger.exception("events loop error; resubscribing")
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(*REDIS_DOWN, RuntimeError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated in redis-py

    def _on_event_safely(self, data: object) -> None:
        """Handle one event; whatever it holds, the events loop goes on with the next one."""
        try:
            event = parse_event(data)
        except WireError as exc:
            log_skipped("worker events", exc)
            return
        except Exception as exc:  # not even bytes, or a parser failure: skipped all the same
            log_skipped("worker events", WireError(brief(exc)))
            return
        try:
            self._on_event(event)
        except Exception:
            logger.exception("worker event %s not handled", type(event).__name__)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, WorkerEvent):
            self._workers_read_at = 0.0
            self._poke()
            return
        job = self._in_flight.get(event.job_id)
        if job is None:
            return
        if isinstance(event, StartedEvent):
            self._extend_deadline(job)  # a (re)delivered copy started: its GPU budget is new
        if isinstance(event, StartedEvent | ProgressEvent):
            job.state = "running"
            job.worker = event.worker or job.worker
        if isinstance(event, ProgressEvent):
            if job.on_progress is not None and not job.future.done():
                try:
                    job.on_progress(event.progress())
                except Exception:
                    logger.exception("progress callback for job %s failed", event.job_id)
        elif isinstance(event, DoneEvent):
            asyncio.create_task(self._complete(event.job_id))  # noqa: RUF006

    async def _reconcile_loop(self) -> None:
        """Catch what pub/sub can miss: finished jobs, and jobs a data-losing Redis forgot."""
        interval = min(1.0, self.settings.heartbeat_s)
        while not self._closing:
            await asyncio.sleep(interval)
            try:
                await self._give_up_overdue()
                await self._reconcile()
            except Exception:  # a bug here must not leave finished jobs unanswered for good
                logger.exception("reconcile loop error")

    async def _give_up_overdue(self) -> None:
        """Fail the jobs that are past the bot's answer deadline and free their slots."""
        now = time.monotonic()
        for job in list(self._in_flight.values()):
            overdue = now > job.answer_by and not job.completing
            if overdue and job.state in ("dispatched", "running"):
                await self._give_up(job)

    async def _give_up(self, job: RemoteJob) -> None:
        job_id = job.request.job_id
        job.completing = True
        logger.warning(
            "job %s: no answer %.0fs past its GPU deadline (%s on %s); failing it",
            job_id,
            self.settings.answer_margin_s,
            job.state,
            job.worker or "no worker yet",
        )
        self._in_flight.pop(job_id, None)
        self._jobs.pop(job_id, None)
        settle(job.future, JobFailed(FailureKind.TIMEOUT, NO_ANSWER_MESSAGE))
        self._poke()
        if self._redis is None:
            return
        try:
            # A worker that still has it stops at its next step; one that takes it later skips.
            pipe = self._redis.pipeline(transaction=True)
            pipe.set(self.keys.cancel(job_id), b"1", ex=self.settings.result_ttl_s)
            pipe.set(self.keys.done(job_id), b"1", ex=self.settings.result_ttl_s)
            pipe.delete(self.keys.marker(job_id))
            pipe.expire(self.keys.result(job_id), self.settings.result_keep_s)
            await pipe.execute()
        except REDIS_DOWN as exc:
            logger.info("job %s: could not flag it as given up (%s)", job_id, exc)

    async def _reconcile(self) -> None:
        jobs = [j for j in self._in_flight.values() if j.state in ("dispatched", "running")]
        if not jobs or self._redis is None:
            return
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
            return
        for index, job in enumerate(jobs):
            has_result, known = flags[2 * index], flags[2 * index + 1]
            if has_result:
                await self._complete(job.request.job_id)
            elif not known and job.request.job_id in self._in_flight:
                logger.warning(
                    "job %s vanished from Redis (restarted without persistence?); sending it again",
                    job.request.job_id,
                )
                job.state = "dispatching"
                self._poke()

    async def _complete(self, job_id: str) -> None:
        """Read the stored outcome and answer the job. Whatever Redis holds there, the job is
        answered once: a result that is no taskiq result, one taskiq refuses to rebuild, or one
        nested too deep fails it with a plain message (the member is refunded)."""
        job = self._in_flight.get(job_id)
        if job is None or job.completing:
            return
        job.completing = True
        assert self._broker is not None and self._redis is not None
        outcome: JobResult | JobFailed
        try:
            result = await self._broker.result_backend.get_result(job_id)
        except ResultIsMissingError:
            job.completing = False
            return
        except REDIS_DOWN as exc:
            job.completing = False
            self._set_redis_ok(False, exc)
            return
        except Exception as exc:  # ValueError, taskiq's SecurityError, RecursionError...
            logger.error("job %s: unreadable result (%s)", job_id, brief(exc))
            outcome = JobFailed(FailureKind.ERROR, ERROR_MESSAGE)
        else:
            outcome = parse_outcome(job_id, result)
        self._in_flight.pop(job_id, None)
        self._jobs.pop(job_id, None)
        settle(job.future, outcome)
        self._poke()
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.expire(self.keys.result(job_id), self.settings.result_keep_s)
            pipe.set(self.keys.done(job_id), b"1", ex=self.settings.result_ttl_s)
            pipe.delete(self.keys.marker(job_id), self.keys.cancel(job_id))
            await pipe.execute()
        except REDIS_DOWN as exc:
            logger.debug("cleanup after job %s postponed: %s", job_id, exc)
