"""/gallery, the Gallery button under /history and /limits gallery, through SimCord, with the
links opened on the bot's own web server (the health server, where the gallery is mounted)."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from typing import Any

import aiohttp
import discord
import pytest
import simcord

import db
from bot.store import ImageStore
from tests.bot.gallery.harness import artwork
from tests.bot.harness import Harness


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "health_host": "127.0.0.1",
        "health_port": free_port(),
        "gallery_secret": "a-test-secret-that-is-long-enough",
        "gallery_link_ttl_s": 7200,
    }


async def store_image(harness: Harness, user: Any, prompt: str, guild: bool = True) -> None:
    """An image as the bot keeps a delivered one: a finished row plus the stored files."""
    database = harness.database
    key = str(abs(hash((prompt, user.id))) % 10**18)
    guild_id = harness.guild.id if guild else None
    await db.reserve_generation(
        database,
        db.NewGeneration(key, user.id, 1, guild_id, prompt, "none", "1:1", "fast"),
        daily_quota=None,
        max_queued=None,
    )
    store: ImageStore = harness.bot.store  # type: ignore[attr-defined]
    stored = await asyncio.to_thread(store.put, artwork(int(key) % 1000, (64, 64)))
    await db.add_image(
        database,
        job_key=key,
        sha256=stored.sha256,
        size=stored.size,
        width=stored.width,
        height=stored.height,
        thumb_size=stored.thumb_size,
        user_id=user.id,
        guild_id=guild_id,
    )


def link_of(answer: Any) -> str:
    message = answer.response
    match = re.search(r"<(http://127\.0\.0\.1:[0-9]+/gallery/[^>]+)>", message.content)
    assert match, message.content
    buttons = [c for row in message.components for c in row["components"]]
    link_style = discord.ButtonStyle.link.value
    assert [b["url"] for b in buttons if b["style"] == link_style] == [match.group(1)]
    return match.group(1)


async def page_text(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def test_gallery_links_show_what_each_member_may_see(
    harness: Harness, tmp_path: Path
) -> None:
    harness.bot.store = ImageStore(tmp_path / "images")  # type: ignore[attr-defined]
    alice, bob = harness.member("alice"), harness.member("bob")
    await store_image(harness, alice, "alice's lighthouse")
    await store_image(harness, bob, "bob's windmill")
    await store_image(harness, alice, "alice's DM sketch", guild=False)

    answer = await alice.slash(harness.channel, "gallery")
    assert answer.ephemeral
    assert "your images from this server" in answer.response.content
    status, page = await page_text(link_of(answer))
    assert status == 200
    assert "alice&#39;s lighthouse" in page
    assert "windmill" not in page and "DM sketch" not in page

    admin = await harness.admin.slash(harness.channel, "gallery")
    assert "every image made in this server (you can delete" in admin.response.content
    status, page = await page_text(link_of(admin))
    assert "alice&#39;s lighthouse" in page and "bob&#39;s windmill" in page
    assert "DM sketch" not in page

    # An admin opens the gallery to members: Alice's next link (and her old one) show Bob's.
    opened = await harness.admin.slash(harness.channel, "limits gallery", state="on")
    assert opened.response.content == "Members now see every image made here in /gallery."
    again = await harness.admin.slash(harness.channel, "limits gallery", state="on")
    assert again.response.content.startswith("Members already see every image")
    status, page = await page_text(link_of(answer))
    assert "bob&#39;s windmill" in page
    fresh = await alice.slash(harness.channel, "gallery")
    assert "every image made in this server" in fresh.response.content
    with pytest.raises(simcord.SetupError, match="not visible"):  # admins only
        await alice.slash(harness.channel, "limits gallery", state="off")
    await harness.admin.slash(harness.channel, "limits gallery", state="off")
    status, page = await page_text(link_of(answer))
    assert "windmill" not in page


async def test_gallery_in_dms_shows_the_members_dm_images(harness: Harness, tmp_path: Path) -> None:
    harness.bot.store = ImageStore(tmp_path / "images")  # type: ignore[attr-defined]
    alice = harness.member("alice")
    await store_image(harness, alice, "alice's lighthouse")
    await store_image(harness, alice, "alice's DM sketch", guild=False)
    answer = await alice.user.slash("gallery")  # in the DM channel with the bot
    assert "your images from our direct messages" in answer.response.content
    status, page = await page_text(link_of(answer))
    assert status == 200 and "DM sketch" in page and "lighthouse" not in page


async def test_history_has_a_gallery_button(harness: Harness, tmp_path: Path) -> None:
    harness.bot.store = ImageStore(tmp_path / "images")  # type: ignore[attr-defined]
    alice = harness.member("alice")
    await store_image(harness, alice, "alice's lighthouse")
    listing = await alice.slash(harness.channel, "history")
    labels = [c["label"] for row in listing.response.components for c in row["components"]]
    assert "Gallery" in labels
    click = await alice.click(listing.response, label="Gallery")
    assert click.ephemeral
    status, page = await page_text(link_of(click))
    assert status == 200 and "alice&#39;s lighthouse" in page


@pytest.mark.parametrize("settings_overrides", [{"health_port": 0}])
async def test_gallery_says_so_when_the_web_server_is_off(harness: Harness) -> None:
    answer = await harness.member("alice").slash(harness.channel, "gallery")
    assert answer.ephemeral and "web gallery is off" in answer.response.content
    listing = await harness.member("alice").slash(harness.channel, "history")
    labels = [c["label"] for row in listing.response.components for c in row["components"]]
    assert "Gallery" not in labels


async def test_a_new_admin_link_starts_from_what_discord_says_now(
    harness: Harness, tmp_path: Path
) -> None:
    """The gallery remembered that this member was no admin (demoted, since promoted again):
    the link /gallery makes now shows the whole gallery at once, not a member's view."""
    from bot.gallery.wiring import admins_for

    harness.bot.store = ImageStore(tmp_path / "images")  # type: ignore[attr-defined]
    bob = harness.member("bob")
    await store_image(harness, bob, "bob's windmill")
    admins_for(harness.bot).remember(harness.guild.id, harness.admin.id, False)
    answer = await harness.admin.slash(harness.channel, "gallery")
    assert "you can delete any of them" in answer.response.content
    status, page = await page_text(link_of(answer))
    assert status == 200
    assert "bob&#39;s windmill" in page and "no longer have Manage Server" not in page


async def test_an_admin_ends_every_gallery_link_of_the_server(
    harness: Harness, tmp_path: Path
) -> None:
    """issue 20 item 9: ``/limits gallery_revoke`` ends every link given out here; the next
    /gallery gives a link that works."""
    harness.bot.store = ImageStore(tmp_path / "images")  # type: ignore[attr-defined]
    alice = harness.member("alice")
    await store_image(harness, alice, "alice's lighthouse")
    old = link_of(await alice.slash(harness.channel, "gallery"))
    assert (await page_text(old))[0] == 200
    with pytest.raises(simcord.SetupError, match="not visible"):  # admins only
        await alice.slash(harness.channel, "limits gallery_revoke")

    revoked = await harness.admin.slash(harness.channel, "limits gallery_revoke")

    assert revoked.ephemeral
    assert revoked.response.content == (
        "Every gallery link given out in this server so far has stopped working. Members (you "
        "too) get a new one with /gallery."
    )
    status, page = await page_text(old)
    assert status == 403 and "An admin of this server ended every gallery link" in page
    status, page = await page_text(link_of(await alice.slash(harness.channel, "gallery")))
    assert status == 200 and "alice&#39;s lighthouse" in page


async def test_discord_tells_the_gallery_who_is_still_a_member(harness: Harness) -> None:
    """issue 20 item 9: the question a link asks, against the real bot's Discord client."""
    from bot.gallery.admins import Standing
    from bot.gallery.wiring import member_standing

    alice = harness.member("alice")
    guild_id = harness.guild.id
    assert await member_standing(harness.bot, guild_id, alice.id) is Standing.MEMBER
    assert await member_standing(harness.bot, guild_id, harness.admin.id) is Standing.ADMIN
    harness.guild.remove_member(alice)
    assert await member_standing(harness.bot, guild_id, alice.id) is Standing.GONE
