"""Once an image is delivered it is never taken back, and what the member then reads about it
is already final.

- A database error right after the upload (recording the job as done) never turns the image
  into "failed" with a refund: the write is retried, and if the database stays down the row is
  left for recovery, which records the job from what was delivered.
- Details and /history right after delivery show a finished image: no "running", no "?".
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

import db
from tests.bot.harness import Harness, attachment_bytes

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def database_error() -> OperationalError:
    return OperationalError("UPDATE generations ...", {}, Exception("database is locked"))


async def test_a_database_error_once_after_the_upload_keeps_the_image(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = db.complete_generation
    calls: list[str] = []

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append("complete")
        if len(calls) == 1:
            raise database_error()
        return await real(*args, **kwargs)

    monkeypatch.setattr(db, "complete_generation", flaky)
    alice = harness.member("alice")
    result = await alice.slash(harness.channel, "imagine", prompt="a kept image")
    await harness.wait_jobs()
    message = harness.message(result.response.id)
    assert await attachment_bytes(message)  # the image is still there
    assert "failed" not in message.content
    row = await harness.row(harness.key(result))
    assert row.status == "done" and row.message_id == message.id and row.charged
    assert (await harness.quota(alice)).used == 1
    assert len(calls) == 2


async def test_a_database_that_stays_down_leaves_the_row_for_recovery(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = db.complete_generation

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise database_error()

    monkeypatch.setattr(db, "complete_generation", down)
    monkeypatch.setattr("bot.imagine.finish.RECORD_RETRY_DELAYS_S", (0.0, 0.0))
    alice = harness.member("alice")
    result = await alice.slash(harness.channel, "imagine", prompt="still kept", seed=77)
    await harness.wait_jobs()
    message = harness.message(result.response.id)
    assert await attachment_bytes(message)
    assert "failed" not in message.content
    row = await harness.row(harness.key(result))
    # Neither failed nor refunded: the job waits, delivered, for the next start to record it.
    assert row.status == "delivering" and row.charged and row.seed_used == 77
    assert (await harness.quota(alice)).used == 1

    monkeypatch.setattr(db, "complete_generation", real)
    await harness.restart()
    await harness.wait_until(
        lambda: harness.row(harness.key(result)), what="the row after the restart"
    )

    async def recorded() -> bool:
        return (await harness.row(harness.key(result))).status == "done"

    await harness.wait_until(recorded, what="recovery to record the delivered job")
    row = await harness.row(harness.key(result))
    assert row.message_id == message.id and row.charged
    assert len(list(harness.channel.history())) == 1  # never posted twice


async def test_details_and_history_right_after_delivery_show_a_finished_image(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the upload and the row becoming done, a member can already click Details."""
    real = db.complete_generation
    gate = asyncio.Event()

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await harness.env.external_wait(gate.wait(), reason="a slow database write")
        return await real(*args, **kwargs)

    monkeypatch.setattr(db, "complete_generation", slow)
    alice = harness.member("alice")
    result = await alice.slash(harness.channel, "imagine", prompt="quick look", seed=5)
    key = harness.key(result)

    def uploaded() -> bool:
        message = harness.message(result.response.id)
        labels = [child.label for row in message.components for child in row.children]
        return bool(message.attachments) and "Details" in labels

    await harness.wait_until(uploaded, what="the upload")
    assert (await harness.row(key)).status != "done"  # the window this test is about

    message = harness.message(result.response.id)
    details = await alice.click(message, label="Details")
    values = {f.name: f.value for f in details.response.embeds[0].fields}
    assert values["Status"] == "done"
    assert values["Seed"] == "`5`" and values["Steps"] == "8" and values["Model"] != "?"
    assert "?" not in values["Seconds"]

    listing = await alice.slash(harness.channel, "history")
    (embed,) = listing.response.embeds
    assert "· done ·" in embed.description and "✅" in embed.description
    assert "running" not in embed.description and "delivering" not in embed.description
    assert "seed 5" in embed.description

    gate.set()
    await harness.wait_jobs()
    assert (await harness.row(key)).status == "done"
