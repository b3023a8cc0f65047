"""How ``RedisBackend`` moves jobs: to free workers, progress back, results home.

The background half of the bot-side backend (``engine.redis.backend`` holds the public
``ImageBackend`` half): the dispatcher hands a waiting job to the broker when a worker slot is
free, the events loop turns worker events into progress callbacks and completions, and the
reconcile loop catches what pub/sub missed (and jobs a data-losing Redis forgot). An event or
result this version cannot read is logged and skipped: no loop ends because of a message.

Routing by capability. Each job goes to the stream of what it needs (``RedisKeys.stream_for``:
text-to-image to the main stream, edits to the edit stream) and only workers that can run it
read that stream, so a worker without the edit model never takes an edit job: Redis itself
enforces it, whoever dispatches. The dispatcher keeps the accounting honest on top: it hands
out an edit job only while an edit-capable worker has a free slot (a slot is not free while a
job it took runs there), and otherwise lets text-to-image jobs behind it go first
(``FairQueue.pop(only=...)``), so an edit waiting for the one edit worker never holds back
images other workers could make. This is simpler than assigning jobs to named workers (no
reassignment when a worker dies: the stream's own redelivery still works) and needs nothing
new on the worker side but reading one more stream.

The three loops stay one piece: they are the life of one ``RemoteJob`` (``engine.redis.jobs``)
— waiting, dispatched, running, completing — and each moves it on from where another left it,
through the same job table, slot count and worker view, on one event loop without locks. Split
by loop, every module would reach into the others' private state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis.asyncio import Redis
from taskiq.kicker import AsyncKicker
from taskiq_redis.exceptions import ResultIsMissingError

from engine.admission import ERROR_MESSAGE, settle
from engine.contract import (
    CAPABILITY_EDIT,
    CAPABILITY_GENERATE,
    FailureKind,
    JobFailed,
    JobResult,
)
from engine.fairqueue import FairQueue
from engine.redis.broker import ResilientStreamBroker
from engine.redis.connection import REDIS_DOWN
from engine.redis.jobs import RemoteJob, parse_outcome
from engine.redis.keys import TASK_NAME, RedisKeys
from engine.redis.presence import read_workers
from engine.redis.settings import RemoteSettings
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
    brief,
    log_skipped,
    parse_event,
)
from engine.settings import EngineSettings

logger = logging.getLogger(__name__)

NO_ANSWER_MESSAGE = (
    "No GPU worker answered for this image in time, so it was given up — nothing was charged. "
    "Please try again."
)


class JobRouting:
    """The state and loops that carry jobs between the bot's queue and the workers."""

    settings: RemoteSettings
    engine_settings: EngineSettings
    keys: RedisKeys
    _waiting: FairQueue[RemoteJob]
    _jobs: dict[str, RemoteJob]  # every job this process follows, by id
    _in_flight: dict[str, RemoteJob]  # handed to the broker (or being handed)
    _workers: list[Heartbeat]
    _workers_read_at: float
    _last_worker_seen: float
    _redis_ok: bool
    _redis: Redis | None
    _broker: ResilientStreamBroker | None
    _wake: asyncio.Event | None
    _started: bool
    _closing: bool

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
            if j.request.needs == capability or (j.worker is not None and j.worker in capable)
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
            # An edit goes out only while an edit-capable worker is free; the jobs behind it
            # that any worker can run go first meanwhile.
            only = None
            if self._free_slots_for(CAPABILITY_EDIT) <= 0:
                only = (CAPABILITY_GENERATE,)
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
        message = JobMessage.of(
            job.request,
            submitted_at=job.submitted_at,
            dispatched_at=time.time(),
            attempt=job.attempt + 1,
        )
        labels: dict[str, Any] = {}
        if job.request.needs != CAPABILITY_GENERATE:  # to the stream only capable workers read
            labels["queue_name"] = self.keys.stream_for(job.request.needs)
        kicker: AsyncKicker[Any, Any] = AsyncKicker(TASK_NAME, self._broker, labels)
        await kicker.with_task_id(job_id).kiq(message.model_dump(mode="json"))
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
                    await pubsub.aclose()

    def _on_event_safely(self, data: Any) -> None:
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
