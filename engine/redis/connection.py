"""Redis clients for both sides, what "Redis is down" means, and retrying until it is back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypedDict, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from taskiq.exceptions import SendTaskError

from engine.redis.settings import RemoteSettings

logger = logging.getLogger(__name__)

# Errors that mean "Redis cannot be reached right now" (as opposed to a bug in a command).
REDIS_DOWN = (RedisError, OSError, SendTaskError)

T = TypeVar("T")


class ConnectionOptions(TypedDict):
    """What every client and connection pool here is built with."""

    socket_connect_timeout: float
    socket_timeout: float
    socket_keepalive: bool
    health_check_interval: int
    retry: Retry


def connection_kwargs(settings: RemoteSettings, socket_timeout: float = 30.0) -> ConnectionOptions:
    """Fail fast, retry once: a pooled connection that died with a Redis restart reconnects."""
    return {
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_timeout": socket_timeout,
        "socket_keepalive": True,
        "health_check_interval": 15,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
    }


def make_redis(settings: RemoteSettings) -> Redis:
    """A client for ``IMAGINE_REDIS_URL`` with the timeouts above."""
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
    operation: Callable[[], Awaitable[T]],
    *,
    first_delay: float = 0.2,
    max_delay: float = 5.0,
) -> T:
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
