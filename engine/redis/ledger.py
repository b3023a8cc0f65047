"""A worker's per-job bookkeeping in Redis: what makes at-least-once delivery run a job once.

* a job whose result exists (or that the bot already received) is a duplicate: skipped;
* every delivery is counted, so a job that keeps killing workers is failed, not retried forever;
* a worker takes a ``SET NX`` claim before it renders, and waits while a *live* worker holds it
  (the claim is renewed with the heartbeat and lapses soon after its worker died);
* while a job renders, the cancel flag and a result stored by another worker stop it at the
  next denoising step.

Every check is retried until Redis answers: a job in hand is never dropped for an outage.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis

from engine.contract import FailureKind
from engine.redis.connection import REDIS_DOWN, retry_forever
from engine.redis.keys import RedisKeys
from engine.redis.settings import RemoteSettings

logger = logging.getLogger(__name__)

# How often a running job looks for its cancel flag or a result stored elsewhere.
STOP_POLL_S = 0.25


class JobLedger:
    """The Redis side of running one job at a time on one worker (consumer)."""

    def __init__(
        self, redis: Redis, keys: RedisKeys, settings: RemoteSettings, consumer: str
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.consumer = consumer

    async def finished(self, job_id: str) -> bool:
        """A result is stored, or the bot has already received one."""

        async def check() -> bool:
            return bool(await self.redis.exists(self.keys.result(job_id), self.keys.done(job_id)))

        return bool(await retry_forever("checking a job", check))

    async def count_delivery(self, job_id: str) -> int:
        """This delivery's number (1 for the first)."""

        async def count() -> int:
            pipe = self.redis.pipeline(transaction=True)
            pipe.incr(self.keys.attempts(job_id))
            pipe.expire(self.keys.attempts(job_id), self.settings.result_ttl_s)
            value, _ = await pipe.execute()
            return int(value)

        return int(await retry_forever("counting a delivery", count))

    async def cancelled(self, job_id: str) -> bool:
        async def check() -> bool:
            return bool(await self.redis.exists(self.keys.cancel(job_id)))

        return bool(await retry_forever("checking a job", check))

    async def claim(self, job_id: str) -> bool:
        """Take the job's claim, waiting while another *live* worker holds it (its claim is
        renewed every heartbeat, and lapses within ``claim_ttl_s`` if that worker died).
        False when the job got finished elsewhere meanwhile."""
        key = self.keys.claim(job_id)
        ttl_ms = int(self.settings.claim_ttl_s * 1000)
        waited = False
        while True:

            async def attempt() -> tuple[bool, bytes | str | None]:
                if await self.redis.set(key, self.consumer, nx=True, px=ttl_ms):
                    return True, None
                return False, await self.redis.get(key)

            won, holder = await retry_forever("claiming a job", attempt)
            if won or holder == self.consumer.encode():
                return True
            if await self.finished(job_id):
                return False
            if not waited:
                logger.info("job %s is being rendered by %r; waiting for it", job_id, holder)
                waited = True
            await asyncio.sleep(min(1.0, self.settings.heartbeat_s / 2))

    async def watch(self, job_id: str, stop: list[FailureKind], superseded: list[bool]) -> None:
        """Turn a cancel flag, or a result stored by another worker, into a stop at the next
        step. A Redis outage does not stop the job: it goes on and saves when Redis is back."""
        keys = self.keys
        while not stop:
            await asyncio.sleep(STOP_POLL_S)
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.exists(keys.cancel(job_id))
                pipe.exists(keys.result(job_id), keys.done(job_id))
                cancelled, finished = await pipe.execute()
            except REDIS_DOWN:
                continue
            if finished:
                logger.info("job %s was finished by another worker; stopping this copy", job_id)
                superseded.append(True)
                stop.append(FailureKind.CANCELLED)
            elif cancelled:
                logger.info("job %s cancelled", job_id)
                stop.append(FailureKind.CANCELLED)
