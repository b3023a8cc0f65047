"""The taskiq pieces both sides configure alike: stream broker, result backend, middleware.

Everything distributed here is taskiq with taskiq-redis: a Redis Streams broker (consumer
group, acknowledgement after the result is saved, idle-time redelivery through XAUTOCLAIM) and
the Redis result backend. The subclasses below change only what production needs from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection
from typing import TypeAlias, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from redis.typing import KeyT, StreamIdT
from taskiq import AckableMessage, TaskiqMiddleware, TaskiqResult
from taskiq.acks import parse_acknowledge_type
from taskiq.message import TaskiqMessage
from taskiq.serializers import JSONSerializer
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from engine.contract import TASK_GENERATE
from engine.redis.connection import REDIS_DOWN, cancelling, connection_kwargs, retry_forever
from engine.redis.keys import RedisKeys
from engine.redis.settings import RemoteSettings
from engine.redis.wire import DoneEvent, brief

logger = logging.getLogger(__name__)

# A stream entry as the broker takes it: its stream, its id, its fields.
Entry: TypeAlias = tuple[str, bytes, dict[bytes, bytes]]
# An XREADGROUP reply on these connections (RESP2, nothing decoded): each stream read, with
# its entries as (id, fields).
_StreamReply: TypeAlias = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]


class DurableResultBackend(RedisAsyncResultBackend[object]):
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

    async def set_result(self, task_id: str, result: TaskiqResult[object]) -> None:
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
    * an entry this worker cannot run (no ``data`` field, not a taskiq message, another task,
      labels taskiq would choke on after taking it) is logged once, acknowledged and skipped:
      it never ends the loop, and never stays pending to come back to the next worker;
    * an acknowledged entry is deleted (XDEL): the stream holds the jobs in progress, not the
      prompts of every job ever made;
    * ``closing`` ends the loop within one read; redis-py can swallow a cancellation that lands
      mid-read, so shutdown must not depend on cancellation alone;
    * acks are retried until they land, so a finished job is not redelivered merely because
      Redis blinked at the wrong moment;
    * several streams (one per capability, ``RedisKeys.stream_for``: an edit-capable worker
      also reads the edit stream) are read one entry at a time, the first stream first, so a
      worker never holds a second job while it runs one; it then waits for news on all of
      them with a plain ``XREAD`` that takes nothing.
    """

    closing = False
    _reclaim_from = 0.0

    @property
    def streams(self) -> list[str]:
        """The streams this broker reads: the additional ones (rarer capabilities) first."""
        return [*self.additional_streams, self.queue_name]

    def hold_reclaim(self) -> None:
        """After a Redis outage every entry looks idle, live workers' too: reclaim nothing for
        one redelivery period, so the workers that are alive renew their entries first."""
        self._reclaim_from = time.monotonic() + self.idle_timeout / 1000

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        delay = 0.2
        group, consumer = self.consumer_group_name, self.consumer_name
        while not self.closing:
            try:
                async with Redis(connection_pool=self.connection_pool) as redis:
                    while not self.closing:
                        entries = await self._next_entries(redis, group, consumer)
                        delay = 0.2
                        for stream, entry_id, fields in entries:
                            ack = self._durable(self._ack_and_delete(entry_id, stream))
                            data = fields.get(b"data")
                            problem = self._unrunnable(data)
                            if problem is not None:
                                logger.warning(
                                    "skipped stream entry %s: %s",
                                    entry_id.decode(errors="replace")[:40],
                                    problem,
                                )
                                await ack()
                                continue
                            yield AckableMessage(data=data, ack=ack)
            except (*REDIS_DOWN, ResponseError) as exc:
                if cancelling():
                    raise
                self.hold_reclaim()
                logger.warning("job stream unavailable (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                with contextlib.suppress(*REDIS_DOWN):
                    await self._declare_consumer_group()
            except Exception:  # a bug, or a reply this code did not expect: go on reading
                if cancelling():
                    raise
                logger.exception("job stream read failed; reading again in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _unrunnable(self, data: bytes | None) -> str | None:
        """Why taskiq could not run this entry here, or None. Checked before taskiq sees it:
        taskiq logs a bad message whole (a huge one floods the log) and raises on bad labels
        after it took the entry, leaving it pending to come back to every worker in turn."""
        if data is None:
            return "no data field (not a taskiq message)"
        try:
            message = self.formatter.loads(message=data)
            message.parse_labels()
            if self.find_task(message.task_name) is None:
                return f"task {message.task_name[:60]!r} is not run by this worker"
            ack_type = message.labels.get("ack_type")
            if ack_type is not None:
                parse_acknowledge_type(ack_type)
        except Exception as exc:
            return f"not a taskiq message this worker can run ({brief(exc)})"
        return None

    async def _next_entries(self, redis: Redis, group: str, consumer: str) -> list[Entry]:
        """One abandoned entry to take over, else one new entry (or none after ``block``),
        each with the stream it came from."""
        streams = self.streams
        if time.monotonic() >= self._reclaim_from:
            for stream in streams:
                _next, claimed, *_deleted = await redis.xautoclaim(
                    stream, group, consumer, min_idle_time=self.idle_timeout, count=1
                )
                entries = [(stream, i, m) for i, m in claimed if m]  # trimmed ones: None
                if entries:
                    logger.warning(
                        "taking over stream entry %s: its worker stopped answering",
                        entries[0][1].decode(errors="replace"),
                    )
                    return entries
        if len(streams) == 1:
            return await self._read_new(redis, group, consumer, streams[0], block=self.block)
        # COUNT is per stream: one blocking read of two streams could take two jobs at once
        # (one would wait behind the other on this worker while another worker idles). So:
        # note where each stream ends, take at most one entry without blocking, then wait
        # (taking nothing) for anything added after the noted ends, which includes an entry
        # added between the two steps.
        ends = await self._stream_ends(redis, streams)
        for stream in streams:
            entries = await self._read_new(redis, group, consumer, stream)
            if entries:
                return entries
        await redis.xread(ends, count=1, block=self.block)
        return []

    @staticmethod
    async def _read_new(
        redis: Redis, group: str, consumer: str, stream: str, block: int | None = None
    ) -> list[Entry]:
        """At most one new entry of ``stream``: a worker holds only the job it runs next."""
        reply = await redis.xreadgroup(group, consumer, {stream: ">"}, count=1, block=block)
        # redis-py types the reply for RESP3 and decoded strings too; these connections
        # speak RESP2 and decode nothing.
        batches = cast("_StreamReply | None", reply)
        return [(stream, i, m) for _s, batch in batches or [] for i, m in batch]

    @staticmethod
    async def _stream_ends(redis: Redis, streams: list[str]) -> dict[KeyT, StreamIdT]:
        """The last ID each stream generated ("$" for a stream that does not exist yet)."""
        pipe = redis.pipeline(transaction=False)
        for stream in streams:
            pipe.xinfo_stream(stream)
        infos = await pipe.execute(raise_on_error=False)
        ends: dict[KeyT, StreamIdT] = {}
        for stream, info in zip(streams, infos, strict=True):
            last = info.get("last-generated-id") if isinstance(info, dict) else None
            ends[stream] = last if last else "$"
        return ends

    def _ack_and_delete(self, entry_id: bytes, stream: str) -> Callable[[], Awaitable[None]]:
        """Acknowledge and delete in one step: nothing is left behind for the stream cap."""

        async def ack() -> None:
            async with Redis(connection_pool=self.connection_pool) as redis:
                pipe = redis.pipeline(transaction=True)
                pipe.xack(stream, self.consumer_group_name, entry_id)
                pipe.xdel(stream, entry_id)
                await pipe.execute()

        return ack

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

    async def post_save(self, message: TaskiqMessage, result: TaskiqResult[object]) -> None:
        backend = self.broker.result_backend
        written = getattr(backend, "written", {}).pop(message.task_id, True)
        event = DoneEvent(job_id=message.task_id, worker=self.worker, written=written)
        try:
            await self.redis.publish(self.keys.events, event.dumps())
        except REDIS_DOWN as exc:
            logger.debug("done event for %s not published: %s", message.task_id, exc)


def make_broker(
    settings: RemoteSettings,
    keys: RedisKeys,
    consumer_name: str | None = None,
    capabilities: Collection[str] = (TASK_GENERATE,),
) -> ResilientStreamBroker:
    """The one taskiq broker configuration both sides use.

    One message per read and one per reclaim: a worker takes only the job it is about to run,
    so a job never waits behind a busy worker while another one is idle. ``capabilities``
    chooses the streams: a worker reads those of what it can run; the bot passes every
    capability so each stream's consumer group exists, and kicks each job to the stream of
    what it needs (the ``queue_name`` label, which taskiq-redis's ``kick`` honours).
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
        additional_streams={
            stream: ">" for stream in keys.streams_for(capabilities) if stream != keys.stream
        },
        **connection_kwargs(settings, socket_timeout=10.0),
    )
    return broker.with_result_backend(DurableResultBackend(settings, keys))
