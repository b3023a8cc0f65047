"""Helpers of the Redis-path tests: a bot-side ``RedisBackend`` and a real in-process worker.

The worker is ``engine.redis.worker.Worker``, the class ``python -m engine.worker`` runs, sharing
this process's loaded tiny pipeline; both run on the test's event loop against the real
Redis-compatible server of ``tests.redis_server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from PIL import Image
from redis.asyncio import Redis
from taskiq.kicker import AsyncKicker

from engine.contract import JobRequest, Mode
from engine.pipeline import ImageGenerator
from engine.redis.backend import RedisBackend
from engine.redis.keys import TASK_NAME
from engine.redis.settings import RemoteSettings
from engine.redis.wire import JobMessage
from engine.redis.worker import Worker
from engine.settings import EngineSettings
from tests.engine.harness import eventually
from tests.redis_server import RedisServer


def remote_settings(server: RedisServer, **overrides: Any) -> RemoteSettings:
    """Fast heartbeats, and a fresh key prefix: tests share a server, never each other's keys."""
    values: dict[str, Any] = {
        "redis_url": server.url,
        "redis_prefix": f"t{uuid.uuid4().hex[:8]}",
        "heartbeat_s": 0.2,
        "redeliver_after_s": 1.0,
    }
    values.update(overrides)
    return RemoteSettings(**values)


class Cluster:
    """A bot-side backend plus one in-process worker, both on the test's event loop."""

    def __init__(self, backend: RedisBackend, worker: Worker, redis: Redis) -> None:
        self.backend = backend
        self.worker = worker
        self.redis = redis
        self.keys = backend.keys

    async def kick(self, job_id: str, payload: Any) -> None:
        """Put a raw task message on the job stream, as a bot (of any version) would."""
        broker = self.backend._broker
        assert broker is not None
        kicker: AsyncKicker[Any, Any] = AsyncKicker(TASK_NAME, broker, {})
        await kicker.with_task_id(job_id).kiq(payload)

    async def kick_job(self, request: JobRequest, dispatched_at: float | None = None) -> None:
        """Hand a job to the workers behind the bot's back (a redelivery, a replayed entry)."""
        now = time.time()
        message = JobMessage(
            request=request, submitted_at=now, dispatched_at=dispatched_at or now, attempt=1
        )
        await self.kick(request.job_id, message.document())


@contextlib.asynccontextmanager
async def running_cluster(
    remote: RemoteSettings, engine: EngineSettings, generator: ImageGenerator
) -> AsyncIterator[Cluster]:
    """A worker named ``test-gpu0`` and a started backend, once the worker's heartbeat is in."""
    worker = Worker(remote, engine, generator, name="test-gpu0")
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    backend = RedisBackend(remote, engine)
    await backend.start()
    redis = Redis.from_url(str(remote.redis_url))

    async def ready() -> bool:
        return (await backend.status()).ready

    try:
        await eventually(ready, "the worker's first heartbeat")
        yield Cluster(backend, worker, redis)
    finally:
        await backend.close()
        stop.set()
        async with asyncio.timeout(30):
            await running
        await redis.aclose()


def request(job_id: str, user_id: int = 1, **fields: Any) -> JobRequest:
    """The usual test job: a fox, seed 7, 8 fast steps."""
    fields.setdefault("prompt", "a red fox in the snow")
    fields.setdefault("seed", 7)
    fields.setdefault("mode", Mode.FAST)
    return JobRequest(job_id=job_id, user_id=user_id, **fields)


def png_parameters(png: bytes) -> dict[str, Any]:
    """The generation parameters the PNG carries in its text chunk."""
    image = Image.open(io.BytesIO(png))
    image.load()
    return json.loads(image.text["parameters_json"])
