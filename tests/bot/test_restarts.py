"""What must survive a new version of the bot: recovery that reads nothing back from a message's
wording, and buttons already posted in servers, whose custom ids are a promise."""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
from contextlib import closing
from typing import Any

import discord
import pytest

import db
from bot import render
from engine.presets import image_size
from tests.bot.harness import Harness, attachment_bytes, png_parameters, post_old_buttons

# Today's custom id formats (bot/views.py before the restructure), written out literally: the
# messages already posted in servers carry exactly these, and must keep working.
OLD_REROLL = "imagine:reroll:{key}"
OLD_VARY = "imagine:vary:{key}"
OLD_DETAILS = "imagine:details:{key}"
OLD_DELETE = "imagine:delete:{key}"
OLD_CANCEL = "imagine:cancel:{key}"
OLD_HISTORY = "imagine:hist:{viewer}:{target}:{page}:{direction}"


def reword_everything(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every text and embed of ``bot.render`` say something else (other field names,
    other values, other footers), as a future rewording of the messages would."""
    patched = []

    def reworded(value: Any) -> Any:
        if isinstance(value, str):
            return f"(reworded) {value}".replace("Done", "Finished")
        if isinstance(value, discord.Embed):
            fields = [(f.name, f.value, f.inline) for f in value.fields]
            value.clear_fields()
            for name, text, inline in fields:
                value.add_field(name=f"~{name}~", value=f"≈ {text}", inline=inline)
            value.set_footer(text="a footer that names no model")
            return value
        return value

    for name in render.__all__:
        fn = getattr(render, name)
        if not inspect.isfunction(fn) or fn.__module__ == "bot.render.text":
            continue

        def wrapper(*args: Any, __fn: Any = fn, **kwargs: Any) -> Any:
            return reworded(__fn(*args, **kwargs))

        monkeypatch.setattr(render, name, wrapper)
        patched.append(name)
    return patched


@pytest.mark.parametrize("where", ["in place", "as a reply"])
async def test_recovery_reads_the_row_not_the_wording(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The process dies after Discord showed the image, before the job was recorded as done,
    with every text reworded: the next start still records the job from its row, exactly,
    and never posts the image again."""
    patched = reword_everything(monkeypatch)
    assert {"result_embed", "job_header", "failure_text", "image_ready_text"} <= set(patched)
    real_complete = db.complete_generation

    async def die(*args: Any, **kwargs: Any) -> Any:
        raise asyncio.CancelledError  # as if the process were killed right here

    monkeypatch.setattr(db, "complete_generation", die)
    alice = harness.member("alice")
    if where == "as a reply":
        harness.engine.hold()
    result = await alice.slash(harness.channel, "imagine", prompt="reworded", seed=6, aspect="16:9")
    key = harness.key(result)
    if where == "as a reply":
        await harness.env.advance_time(16 * 60)  # the token is dead: the image goes as a reply
        harness.engine.release()
    await harness.wait_jobs()
    assert (await harness.row(key)).status == "delivering"
    images = [m for m in harness.channel.history() if m.attachments]
    assert len(images) == 1
    (image,) = images
    assert image.embeds[0].footer.text == "a footer that names no model"
    assert all(f.name.startswith("~") for f in image.embeds[0].fields)

    monkeypatch.setattr(db, "complete_generation", real_complete)
    await harness.restart()
    await harness.wait_jobs()

    row = await harness.row(key)
    assert row.status == "done" and row.message_id == image.id
    width, height = image_size("16:9", 64)
    assert (row.seed_used, row.width, row.height, row.steps, row.mode_used) == (
        6,
        width,
        height,
        8,
        "fast",
    )
    assert row.true_cfg_scale == 1.0 and row.model and row.run_s is not None
    assert [r.job_id for r in harness.engine.submitted].count(key) == 1  # never rendered again
    assert len([m for m in harness.channel.history() if m.attachments]) == 1
    assert png_parameters(await attachment_bytes(harness.message(image.id)))["seed"] == 6
    assert (await harness.quota(alice)).used == 1


async def test_buttons_with_todays_custom_ids_keep_working(harness: Harness) -> None:
    alice, bob = harness.member("alice"), harness.member("bob")
    first = await alice.slash(harness.channel, "imagine", prompt="an old button", seed=17)
    await harness.wait_jobs()
    key = harness.key(first)
    ids = [fmt.format(key=key) for fmt in (OLD_REROLL, OLD_VARY, OLD_DETAILS, OLD_DELETE)]
    old = await post_old_buttons(harness, *ids, for_job=key)

    details = await bob.click(old, custom_id=OLD_DETAILS.format(key=key))
    assert details.ephemeral and details.response.embeds[0].title == "Generation details"

    reroll = await bob.click(old, custom_id=OLD_REROLL.format(key=key))
    assert not reroll.ephemeral
    await harness.wait_jobs()
    assert harness.message(reroll.response.id).attachments

    vary = await alice.click(old, custom_id=OLD_VARY.format(key=key))
    await harness.wait_jobs()
    assert len([vary.response, *vary.followups]) == 2

    kinds = [r.kind for r in await harness.rows()]
    assert kinds == ["imagine", "reroll", "variation", "variation"]

    denied = await bob.click(old, custom_id=OLD_DELETE.format(key=key))
    assert denied.ephemeral and "Only the person who asked" in denied.response.content
    await alice.click(old, custom_id=OLD_DELETE.format(key=key))
    assert old.id not in [m.id for m in harness.channel.history()]

    # Cancel, on a job that is still rendering.
    harness.engine.inner.settings.test_step_delay_s = 0.25
    slow = await alice.slash(harness.channel, "imagine", prompt="slow", mode="standard")
    slow_key = harness.key(slow)
    cancel_message = await post_old_buttons(
        harness, OLD_CANCEL.format(key=slow_key), for_job=slow_key
    )
    refused = await bob.click(cancel_message, custom_id=OLD_CANCEL.format(key=slow_key))
    assert refused.ephemeral and "Only the person who asked" in refused.response.content
    cancelled = await alice.click(cancel_message, custom_id=OLD_CANCEL.format(key=slow_key))
    assert cancelled.acknowledged and not cancelled.ephemeral and not cancelled.followups
    await harness.wait_jobs()
    row = await harness.row(slow_key)
    assert row.status == "cancelled" and not row.charged

    # History paging.
    listing = await post_old_buttons(
        harness, OLD_HISTORY.format(viewer=alice.id, target=alice.id, page=1, direction="n")
    )
    hist_id = OLD_HISTORY.format(viewer=alice.id, target=alice.id, page=1, direction="n")
    stranger = await bob.click(listing, custom_id=hist_id)
    assert stranger.ephemeral
    assert "Only the person who opened this list" in stranger.response.content
    page = await alice.click(listing, custom_id=hist_id)
    assert page.acknowledged and not page.followups
    (embed,) = harness.message(listing.id).embeds
    assert embed.title == "Generations by alice" and embed.footer.text.startswith("Page 1 of")


async def test_a_job_row_written_before_the_job_spec_migration_resumes(harness: Harness) -> None:
    """A Vary job the bot of before ``0007_job_specs`` left unfinished (its row says only
    "variation" and a strength; no kind of its own, no inputs) resumes after the upgrade from
    the row alone: the migration names its input, the parent's stored image."""
    from db.__main__ import main as db_main

    alice = harness.member("alice")
    result = await alice.slash(harness.channel, "imagine", prompt="a tide pool", seed=5)
    await harness.wait_jobs()
    assert result.response is not None
    original = harness.message(result.response.id)
    harness.engine.hold()
    vary = await alice.click(original, label="Vary (Subtle)")
    key = harness.key(vary)
    await harness.bot.close_services()  # the old bot stops with the variation unfinished

    url = harness.bot.settings.database_url
    assert (
        await asyncio.to_thread(db_main, ["--url", url, "downgrade", "0006_gallery_link_epoch"])
        == 0
    )
    path = url.removeprefix("sqlite+aiosqlite:///")
    with closing(sqlite3.connect(path)) as conn:
        (old,) = conn.execute(
            "SELECT kind, status, strength FROM generations WHERE job_key = ?", (key,)
        ).fetchall()
    assert old == ("variation", "queued", 0.35)  # the row as the bot of before wrote it
    assert await asyncio.to_thread(db_main, ["--url", url, "upgrade", "head"]) == 0

    await harness.restart()
    harness.engine.release()
    await harness.wait_jobs()
    row = await harness.row(key)
    assert (row.kind, row.status, row.inputs) == ("vary", "done", [harness.key(result)])
    params = png_parameters(await attachment_bytes(harness.message(row.message_id)))
    assert params["parent_job_id"] == harness.key(result) and params["strength"] == 0.35
    assert (await harness.quota(alice)).used == 2  # the variation charged once
