"""Scale-out entry point: ``RedisBackend`` for the bot, ``python -m engine.remote`` for operators.

The code lives in the ``engine.redis`` package, one module per concern (settings, keys, wire
messages, broker, backend, CLI); this module keeps the names the bot and older callers import
(``from engine.remote import RedisBackend, RemoteSettings``) and runs the operator CLI::

    python -m engine.remote status [--wait SECONDS]
    python -m engine.remote generate "a red fox" --mode fast --out fox.png

No torch on this path: the bot imports it.
"""

from __future__ import annotations

from engine.admission import ERROR_MESSAGE
from engine.redis.backend import UNAVAILABLE_MESSAGE, RedisBackend
from engine.redis.broker import (
    DurableResultBackend,
    JobEventsMiddleware,
    ResilientStreamBroker,
    make_broker,
)
from engine.redis.cli import main
from engine.redis.connection import REDIS_DOWN, make_redis, retry_forever
from engine.redis.jobs import parse_outcome
from engine.redis.keys import TASK_NAME, RedisKeys
from engine.redis.presence import read_workers
from engine.redis.settings import RemoteSettings, redact_url

__all__ = [
    "ERROR_MESSAGE",
    "REDIS_DOWN",
    "TASK_NAME",
    "UNAVAILABLE_MESSAGE",
    "DurableResultBackend",
    "JobEventsMiddleware",
    "RedisBackend",
    "RedisKeys",
    "RemoteSettings",
    "ResilientStreamBroker",
    "main",
    "make_broker",
    "make_redis",
    "parse_outcome",
    "read_workers",
    "redact_url",
    "retry_forever",
]

if __name__ == "__main__":
    raise SystemExit(main())
