"""Housekeeping while the bot runs, not only at start-up: interaction tokens are forgotten once
Discord's 15 minutes are over, and with IMAGINE_HISTORY_RETENTION_DAYS finished history older
than that goes, its stored image files with it; unfinished jobs stay whatever their age."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import db
from tests.bot.harness import Harness

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def stored_files(harness: Harness) -> list[Path]:
    root = Path(harness.bot.settings.image_dir)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def finished(harness: Harness, actor: Any, prompt: str) -> str:
    result = await actor.slash(harness.channel, "imagine", prompt=prompt)
    await harness.wait_jobs()
    return harness.key(result)


@pytest.mark.parametrize("settings_overrides", [{"housekeeping_interval_s": 60}])
async def test_expired_interaction_tokens_are_forgotten_while_running(harness: Harness) -> None:
    alice = harness.member("alice")
    key = await finished(harness, alice, "a token to forget")
    assert (await harness.row(key)).interaction_token is not None  # kept for 15 minutes

    await harness.env.advance_time(16 * 60)  # the bot has been up all along

    async def forgotten() -> bool:
        return (await harness.row(key)).interaction_token is None

    await harness.wait_until(forgotten, what="the expired token to be forgotten")


@pytest.mark.parametrize(
    "settings_overrides", [{"history_retention_days": 30, "housekeeping_interval_s": 86_400}]
)
async def test_history_older_than_the_retention_goes_with_its_files(harness: Harness) -> None:
    alice = harness.member("alice")
    old = await finished(harness, alice, "an old image")
    assert await db.get_image(harness.database, old) is not None
    assert len(stored_files(harness)) == 2  # PNG and thumbnail
    harness.engine.hold()  # an unfinished job, however old, stays
    waiting = await alice.slash(harness.channel, "imagine", prompt="still waiting")

    await harness.env.advance_time(31 * 86_400)

    async def pruned() -> bool:
        return await db.get_generation(harness.database, old) is None

    await harness.wait_until(pruned, what="the old history to be pruned")
    assert await db.get_image(harness.database, old) is None
    assert stored_files(harness) == []
    row = await db.get_generation(harness.database, harness.key(waiting))
    assert row is not None and not row.finished
    harness.engine.release()


def test_history_retention_setting_defaults_to_forever() -> None:
    from bot.settings import BotSettings

    settings = BotSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.history_retention_days == 0
    assert settings.housekeeping_interval_s > 0
