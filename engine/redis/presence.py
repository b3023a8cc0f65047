"""Heartbeats: workers announce themselves and renew their job; the bot reads who is there.

A worker writes its ``Heartbeat`` under its own key (expiring after three missed beats) and
its consumer name into a sorted set scored by time, and renews, in the same beat, the idle time
of the stream entry it runs and its claim on the job, so a slow job is never mistaken for an
abandoned one. The bot reads the live heartbeats for ``/status`` and for the free worker slots
it may dispatch to; an unreadable heartbeat is logged and left out, never fatal.
"""

from __future__ import annotations

import contextlib
import logging
import time

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from engine.redis.connection import REDIS_DOWN
from engine.redis.keys import RedisKeys
from engine.redis.settings import RemoteSettings
from engine.redis.wire import (
    Heartbeat,
    WireError,
    WorkerEvent,
    WorkerState,
    log_skipped,
    parse_heartbeat,
)

logger = logging.getLogger(__name__)

# Renew, in one atomic step, the idle time of every stream entry this worker holds in each of
# its streams (KEYS[1..ARGV[4]], so none is redelivered while it runs) and the job claim
# (the key after the streams), if it is still ours.
RENEW_LEASES = """
local streams = tonumber(ARGV[4])
local renewed = 0
for i = 1, streams do
  local ok, pending = pcall(redis.call, 'XPENDING', KEYS[i], ARGV[1], '-', '+', 10, ARGV[2])
  if ok then
    for _, entry in ipairs(pending) do
      redis.call('XCLAIM', KEYS[i], ARGV[1], ARGV[2], 0, entry[1], 'JUSTID')
      renewed = renewed + 1
    end
  end
end
local claim = KEYS[streams + 1]
if claim and redis.call('GET', claim) == ARGV[2] then
  redis.call('PEXPIRE', claim, ARGV[3])
end
return renewed
"""

# Consumers of workers that exited long ago and hold nothing are dropped from the group.
DEAD_CONSUMER_IDLE_MS = 3_600_000
# Names in the sorted set older than this are trimmed (the keys themselves expire).
ROSTER_KEEP_S = 86_400


# Unreadable heartbeats already logged (key -> hash of the value): the bot re-reads heartbeats
# every few seconds, and one bad value is one finding, not one log line per read.
_reported: dict[str, int] = {}


async def read_workers(redis: Redis, keys: RedisKeys, ttl_s: float) -> list[Heartbeat]:
    """Heartbeats of the workers alive now, oldest first; unreadable ones are skipped (and
    logged once per value)."""
    now = time.time()
    names = await redis.zrangebyscore(keys.workers, now - ttl_s, "+inf")
    if not names:
        return []
    # Undecoded replies (bytes), though redis-py types them for every decoding and form.
    worker_keys = [
        keys.worker(n.decode(errors="replace") if isinstance(n, bytes) else str(n)) for n in names
    ]
    raw = await redis.mget(worker_keys)
    workers = []
    for key, blob in zip(worker_keys, raw, strict=True):
        if not blob:
            continue
        try:
            workers.append(parse_heartbeat(blob))
        except WireError as exc:
            digest = hash(blob)
            if _reported.get(key) != digest:
                if len(_reported) > 1024:
                    _reported.clear()
                _reported[key] = digest
                log_skipped("worker heartbeats", exc)
    return workers


class Presence:
    """A worker's side of the heartbeats: beat, renew leases, leave."""

    def __init__(
        self,
        redis: Redis,
        keys: RedisKeys,
        settings: RemoteSettings,
        consumer: str,
        streams: list[str] | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.consumer = consumer
        # The job streams this worker reads (one per capability it has).
        self.streams = streams or [keys.stream]

    async def beat(self, heartbeat: Heartbeat) -> None:
        """Write the heartbeat; raises when Redis is down (the caller decides what that means)."""
        ttl_ms = int(self.settings.worker_ttl_s * 1000)
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.keys.worker(self.consumer), heartbeat.dumps(), px=ttl_ms)
        pipe.zadd(self.keys.workers, {self.consumer: heartbeat.last_seen})
        pipe.zremrangebyscore(self.keys.workers, "-inf", heartbeat.last_seen - ROSTER_KEEP_S)
        await pipe.execute()

    async def renew_leases(self, job_id: str | None) -> int:
        """Keep this worker's stream entries and its claim on ``job_id`` from expiring."""
        keys = list(self.streams)
        if job_id:
            keys.append(self.keys.claim(job_id))
        renewed = await self.redis.eval(
            RENEW_LEASES,
            len(keys),
            *keys,
            self.keys.group,
            self.consumer,
            int(self.settings.claim_ttl_s * 1000),
            len(self.streams),
        )
        return int(renewed)

    async def queue_depth(self) -> int | None:
        """Jobs in this worker's streams not yet finished (unread plus in progress), all
        workers."""
        depth: int | None = None
        for stream in self.streams:
            try:
                groups = await self.redis.xinfo_groups(stream)
            except ResponseError:  # no such stream yet (nobody sent an edit so far)
                continue
            for group in groups:
                if group["name"].decode() == self.keys.group:
                    depth = (depth or 0) + int(group.get("lag") or 0) + int(group["pending"])
        return depth

    async def announce(self, name: str, state: WorkerState) -> None:
        """Tell the bot at once that this worker came or went (it also polls heartbeats)."""
        event = WorkerEvent(worker=name, state=state)
        await self.redis.publish(self.keys.events, event.dumps())

    async def leave(self, name: str) -> None:
        """Disappear from /status at once and drop this consumer if it holds nothing."""
        with contextlib.suppress(*REDIS_DOWN):
            await self.redis.delete(self.keys.worker(self.consumer))
            await self.redis.zrem(self.keys.workers, self.consumer)
            await self.announce(name, WorkerState.GONE)
            for stream in self.streams:
                with contextlib.suppress(ResponseError):
                    pending = await self.redis.xpending_range(
                        stream, self.keys.group, "-", "+", 1, consumername=self.consumer
                    )
                    if not pending:
                        await self.redis.xgroup_delconsumer(stream, self.keys.group, self.consumer)

    async def forget_dead_consumers(self) -> None:
        """Consumers of exited workers pile up in the group; drop those holding no job."""
        with contextlib.suppress(*REDIS_DOWN):
            for stream in self.streams:
                try:
                    consumers = await self.redis.xinfo_consumers(stream, self.keys.group)
                except ResponseError:  # the stream or its group does not exist (yet)
                    continue
                for consumer in consumers:
                    name = consumer["name"].decode()
                    if consumer["pending"] == 0 and consumer["idle"] > DEAD_CONSUMER_IDLE_MS:
                        await self.redis.xgroup_delconsumer(stream, self.keys.group, name)
