"""Fixtures of the Redis-path tests; the helpers they wrap live in ``harness``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from engine.pipeline import ImageGenerator
from engine.redis.settings import RemoteSettings
from engine.settings import EngineSettings
from tests.engine.redis.harness import Cluster, remote_settings, running_cluster
from tests.redis_server import RedisServer, running_redis


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
def remote(redis_server: RedisServer) -> RemoteSettings:
    return remote_settings(redis_server)


@pytest.fixture
def slow_steps(
    generator: ImageGenerator, monkeypatch: pytest.MonkeyPatch
) -> Callable[[float], None]:
    """Set the test-only per-step sleep that stands in for GPU time."""

    def set_delay(seconds: float) -> None:
        monkeypatch.setattr(generator.settings, "test_step_delay_s", seconds)

    return set_delay


@pytest.fixture
async def cluster(
    remote: RemoteSettings, tiny_settings: EngineSettings, generator: ImageGenerator
) -> AsyncIterator[Cluster]:
    async with running_cluster(remote, tiny_settings, generator) as running:
        yield running
