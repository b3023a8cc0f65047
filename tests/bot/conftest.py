"""Fixtures of the bot tests: the shared tiny engine, a fresh database and bot per test, and
the SimCord world around it. The harness itself (what tests import) is ``tests.bot.harness``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import simcord

import db
from bot import create_bot
from bot.app import ImagineBot
from engine.queue import LocalEngine
from engine.settings import EngineSettings
from tests.bot.harness import ExternalEngine, Harness, bot_settings, drain, tiny_engine

PREVIEW_INTERVAL_S = EngineSettings.model_fields["preview_interval_s"].default


@pytest.fixture(scope="session")
def local_engine(tiny_model_dir: Path) -> Iterator[LocalEngine]:
    """One started tiny engine for every bot test (loading it costs a couple of seconds)."""
    engine = tiny_engine(tiny_model_dir)
    asyncio.run(engine.start())
    asyncio.run(engine.loaded())  # start() returns at once; the model loads on its thread
    yield engine
    asyncio.run(engine.close())


@pytest.fixture
def engine(local_engine: LocalEngine) -> Iterator[ExternalEngine]:
    settings = local_engine.settings
    settings.test_step_delay_s = 0.0
    settings.preview_interval_s = PREVIEW_INTERVAL_S
    wrapper = ExternalEngine(local_engine)
    yield wrapper
    settings.test_step_delay_s = 0.0
    settings.preview_interval_s = PREVIEW_INTERVAL_S


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module (or with indirect parametrisation) to change bot settings."""
    return {}


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[db.Database]:
    database = await db.Database.open(f"sqlite+aiosqlite:///{tmp_path / 'imagine.db'}")
    yield database
    await database.close()


@pytest.fixture
def imagine_bot(
    tmp_path: Path,
    engine: ExternalEngine,
    database: db.Database,
    settings_overrides: dict[str, Any],
) -> ImagineBot:
    return create_bot(bot_settings(tmp_path, **settings_overrides), backend=engine, db=database)


@pytest.fixture
async def env(imagine_bot: ImagineBot, engine: ExternalEngine) -> AsyncIterator[simcord.Env]:
    """A started SimCord world around the bot (the simcord plugin selects its clock for tests)."""
    env = simcord.Env(imagine_bot, settle_timeout=30)
    engine.env = env
    await env.start()
    try:
        yield env
    finally:
        engine.release()
        current = env.bot
        assert isinstance(current, ImagineBot)
        await drain(current, engine, env)
        for bot in {imagine_bot, current}:
            await bot.close_services()
        await env.shutdown()
        env._raise_errors_since(env._errors_acknowledged)


@pytest.fixture
def harness(env: simcord.Env, imagine_bot: ImagineBot, engine: ExternalEngine) -> Harness:
    return Harness(env, imagine_bot, engine)
