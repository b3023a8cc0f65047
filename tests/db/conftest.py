"""Fixtures for the db tests: a freshly migrated SQLite file per test."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from db import Database, NewGeneration

# A fixed instant well away from any quota-day boundary, so tests never straddle midnight.
NOON = dt.datetime(2025, 3, 14, 12, 0, tzinfo=dt.UTC)

GUILD = 111_111_111_111_111_111
OTHER_GUILD = 222_222_222_222_222_222
USER = 333_333_333_333_333_333
CHANNEL = 444_444_444_444_444_444


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/data/imagine.db"


@pytest.fixture
async def database(db_url: str) -> AsyncIterator[Database]:
    db = await Database.open(db_url)
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture
def new_job() -> Callable[..., NewGeneration]:
    """Build a NewGeneration with unique interaction ids unless one is given."""
    counter = itertools.count(1_000_000_000_000_000_000)

    def make(**overrides: object) -> NewGeneration:
        fields: dict[str, object] = {
            "job_key": str(next(counter)),
            "user_id": USER,
            "channel_id": CHANNEL,
            "guild_id": GUILD,
            "prompt": "a red fox in the snow",
            "style": "none",
            "aspect": "1:1",
            "mode": "standard",
        }
        fields.update(overrides)
        return NewGeneration(**fields)  # type: ignore[arg-type]

    return make
