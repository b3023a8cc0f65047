"""The two image backends, built from their settings: what the bot imports to get one.

No torch on this path: the in-process backend imports the models only when it starts, on its
GPU thread, and the Redis backend never does. The settings are read here, once, so that
``python -m bot`` can read them before it contacts Discord (a bad engine or Redis value stops
the start with a plain message instead of after login) and pass them on.
"""

from __future__ import annotations

import dataclasses
import logging

from engine.contract import ImageBackend
from engine.redis.redaction import RedactRedis, url_secrets
from engine.redis.settings import RemoteSettings
from engine.settings import EngineSettings


@dataclasses.dataclass(frozen=True, slots=True)
class BackendSettings:
    """The settings of the backend the bot will run: the engine's, and Redis's when jobs go
    to GPU workers (``IMAGINE_REDIS_URL``)."""

    engine: EngineSettings
    remote: RemoteSettings | None = None


def read_backend_settings(redis_url: str | None) -> BackendSettings:
    """The backend's settings from the environment (and ``.env``); pydantic's
    ``ValidationError`` names what is wrong."""
    remote = RemoteSettings(redis_url=redis_url) if redis_url else None
    return BackendSettings(engine=EngineSettings(), remote=remote)


def log_redaction(redis_url: str | None, *secrets: str) -> logging.Filter:
    """The filter that keeps the bot's secrets out of every log line: ``secrets`` (its Discord
    token), the Redis URL and the password in it, and any Redis URL a message carries."""
    carried = [redis_url, *url_secrets(redis_url)] if redis_url else []
    return RedactRedis([*secrets, *carried])


def build_backend(settings: BackendSettings) -> ImageBackend:
    """Redis workers when ``settings.remote`` is set, else the in-process GPU thread."""
    if settings.remote is not None:
        from engine.redis.backend import RedisBackend

        return RedisBackend(settings.remote, settings.engine)
    from engine.queue import LocalEngine  # torch loads only when the engine starts

    return LocalEngine(settings.engine)
