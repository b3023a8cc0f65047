"""Admin commands (styles, limits, blocked words), their permission checks, /quota, /history."""

from __future__ import annotations

from typing import Any

import discord
import pytest
import simcord
from discord import app_commands

from tests.bot.harness import Harness, attachment_bytes, png_parameters


def fields(embed: discord.Embed) -> dict[str, str]:
    return {f.name: f.value for f in embed.fields}  # type: ignore[misc]


async def test_styles_add_edit_preview_list_remove(harness: Harness) -> None:
    admin = harness.admin
    added = await admin.slash(
        harness.channel,
        "styles add",
        name="noir",
        template="{prompt}, film noir, high contrast",
        negative="color",
        description="moody black and white",
    )
    assert added.ephemeral and "Added the style “noir”" in added.response.content
    preview = fields(added.response.embeds[0])
    assert preview["Template"] == "```{prompt}, film noir, high contrast```"

    # Members can use it at once, and the model reads the template.
    alice = harness.member("alice")
    result = await alice.slash(
        harness.channel, "imagine", prompt="a detective", style="NOIR", seed=4
    )
    await harness.wait_jobs()
    params = png_parameters(await attachment_bytes(harness.message(result.response.id)))
    assert params["style"] == "noir" and params["full_prompt"].startswith("a detective, film noir")

    edited = await admin.slash(
        harness.channel, "styles edit", name="noir", negative="-", description="dark"
    )
    assert "Updated the style “noir”" in edited.response.content
    assert fields(edited.response.embeds[0])["Negative"] == "(none)"

    shown = await admin.slash(harness.channel, "styles preview", name="noir", prompt="a cat")
    # Exactly what the model reads in the true-CFG modes: the quality suffix included.
    assert fields(shown.response.embeds[0])["Prompt the model reads for “a cat”"] == (
        "a cat, film noir, high contrast, Ultra HD, 4K, cinematic composition."
    )

    listing = await admin.slash(harness.channel, "styles list")
    listed = fields(listing.response.embeds[0])
    assert "**noir** — dark" in listed["This server's own (1)"]
    assert "**watercolor**" in listed["Built-in (11)"]

    duplicate = await admin.slash(harness.channel, "styles add", name="Noir", template="{prompt}")
    assert "already has a style called “Noir”" in duplicate.response.content
    no_placeholder = await admin.slash(
        harness.channel, "styles add", name="x", template="just words"
    )
    assert "must contain `{prompt}`" in no_placeholder.response.content
    builtin = await admin.slash(harness.channel, "styles remove", name="anime")
    assert "is a built-in style" in builtin.response.content

    removed = await admin.slash(harness.channel, "styles remove", name="noir")
    assert "Removed the style “noir”" in removed.response.content
    gone = await alice.slash(harness.channel, "imagine", prompt="a detective", style="noir")
    assert gone.ephemeral and "There is no style called “noir”" in gone.response.content


async def test_guild_style_shadows_a_builtin(harness: Harness) -> None:
    added = await harness.admin.slash(
        harness.channel, "styles add", name="anime", template="{prompt}, chibi"
    )
    assert "replaces the built-in style" in added.response.content
    preview = await harness.admin.slash(harness.channel, "styles preview", name="anime")
    assert "chibi" in fields(preview.response.embeds[0])["Template"]


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("styles add", {"name": "x", "template": "{prompt}"}),
        ("styles list", {}),
        ("limits show", {}),
        ("limits set", {"daily_quota": 1000}),
        ("blocked add", {"word": "cat"}),
        ("blocked list", {}),
    ],
)
async def test_admin_commands_are_denied_to_members(
    harness: Harness, command: str, options: dict[str, Any]
) -> None:
    bob = harness.member("bob")
    # Hidden from members by default (default_permissions = Manage Server) ...
    with pytest.raises(simcord.SetupError, match="not visible to this user"):
        await bob.slash(harness.channel, command, **options)
    # ... and refused at run time when a server grants the command to everyone anyway.
    root = harness.env.backend.find_command(command.split()[0], None)
    assert root is not None
    harness.guild.set_command_permissions(int(root["id"]), {harness.guild.default_role: True})
    result = await bob.slash(harness.channel, command, **options)
    assert result.ephemeral
    assert result.response.content == "You need the **Manage Server** permission to do that."
    errors = harness.env.errors
    assert errors and isinstance(errors[-1], app_commands.MissingPermissions)
    assert await harness.rows() == []
    config = await harness.bot.guild_settings.config(harness.guild.id)
    assert config.daily_quota == 25 and config.blocked_words == ()


async def test_limits(harness: Harness) -> None:
    admin = harness.admin
    shown = fields((await admin.slash(harness.channel, "limits show")).response.embeds[0])
    assert shown["Daily quota"] == "25 per member per day (bot default)"
    assert shown["Waiting or running at once"] == "3 per member (bot default)"
    assert shown["Channels where /imagine works"] == "every channel"

    updated = await admin.slash(harness.channel, "limits set", daily_quota=1, max_queued=0)
    after = fields(updated.response.embeds[0])
    # No cap of the server's own: the engine's ceiling is what applies, and the embed says so.
    assert after["Daily quota"] == "1 per member per day"
    assert after["Waiting or running at once"] == (
        "no limit\nAt most 25 per member: the bot-wide ceiling."
    )
    empty = await admin.slash(harness.channel, "limits set")
    assert "Give a `daily_quota`" in empty.response.content

    alice = harness.member("alice")
    await alice.slash(harness.channel, "imagine", prompt="one")
    refused = await alice.slash(harness.channel, "imagine", prompt="two")
    assert refused.ephemeral and "all 1 images" in refused.response.content
    await harness.wait_jobs()

    role = harness.guild.create_role("Patrons")
    added = await admin.slash(harness.channel, "limits exempt add", role=role)
    assert f"<@&{role.id}>" in fields(added.response.embeds[0])["Roles without a daily quota"]
    again = await admin.slash(harness.channel, "limits exempt add", role=role)
    assert "already exempt" in again.response.content
    removed = await admin.slash(harness.channel, "limits exempt remove", role=role)
    assert fields(removed.response.embeds[0])["Roles without a daily quota"] == "none"

    other = harness.guild.create_text_channel("gallery")
    await admin.slash(harness.channel, "limits channels add", channel=other)
    config = await harness.bot.guild_settings.config(harness.guild.id)
    assert config.allowed_channels == (other.id,)
    cleared = await admin.slash(harness.channel, "limits channels remove", channel=other)
    assert "works in every channel again" in cleared.response.content
    await admin.slash(harness.channel, "limits channels add", channel=other)
    await admin.slash(harness.channel, "limits channels clear")
    assert (await harness.bot.guild_settings.config(harness.guild.id)).allowed_channels == ()

    reset = await admin.slash(harness.channel, "limits reset")
    assert fields(reset.response.embeds[0])["Daily quota"] == "25 per member per day (bot default)"


async def test_blocked_words(harness: Harness) -> None:
    admin = harness.admin
    added = await admin.slash(harness.channel, "blocked add", word="  Gore  ")
    assert "||Gore|| are now refused" in added.response.content
    dup = await admin.slash(harness.channel, "blocked add", word="gore")
    assert "already blocked" in dup.response.content
    await admin.slash(harness.channel, "blocked add", word="@everyone ping")
    listing = await admin.slash(harness.channel, "blocked list")
    (embed,) = listing.response.embeds
    assert embed.title == "Blocked words (2)" and "||Gore||" in embed.description
    assert "@\u200beveryone" in embed.description  # shown escaped

    alice = harness.member("alice")
    refused = await alice.slash(harness.channel, "imagine", prompt="so much GORE")
    assert refused.ephemeral and "doesn't allow" in refused.response.content

    removed = await admin.slash(harness.channel, "blocked remove", word="GORE")
    assert "allowed again" in removed.response.content
    missing = await admin.slash(harness.channel, "blocked remove", word="gore")
    assert "is not blocked" in missing.response.content
    allowed = await alice.slash(harness.channel, "imagine", prompt="so much gore")
    assert not allowed.ephemeral
    await harness.wait_jobs()


async def test_quota_command(harness: Harness) -> None:
    alice = harness.member("alice")
    fresh = await alice.slash(harness.channel, "quota")
    assert fresh.ephemeral
    assert "You have **25** of **25** images left today in this server." in fresh.response.content
    assert "resets <t:" in fresh.response.content
    await alice.slash(harness.channel, "imagine", prompt="a")
    await alice.slash(harness.channel, "imagine", prompt="b")
    await harness.wait_jobs()
    used = await alice.slash(harness.channel, "quota")
    assert (
        "**23** of **25**" in used.response.content and "Used today: **2**" in used.response.content
    )

    role = harness.guild.create_role("Staff")
    await harness.admin.slash(harness.channel, "limits exempt add", role=role)
    staff = harness.member("staff", roles=[role])
    exempt = await staff.slash(harness.channel, "quota")
    assert (
        "as many images as you like" in exempt.response.content
        and "exempt" in exempt.response.content
    )


async def test_quota_resets_the_next_day(harness: Harness) -> None:
    await harness.admin.slash(harness.channel, "limits set", daily_quota=1)
    alice = harness.member("alice")
    await alice.slash(harness.channel, "imagine", prompt="today")
    await harness.wait_jobs()
    assert (await alice.slash(harness.channel, "imagine", prompt="again")).ephemeral
    await harness.env.advance_time(24 * 3600)
    tomorrow = await alice.slash(harness.channel, "imagine", prompt="tomorrow")
    assert not tomorrow.ephemeral
    await harness.wait_jobs()


async def test_history_pages_newest_first_with_links(harness: Harness) -> None:
    alice, bob = harness.member("alice"), harness.member("bob")
    for n in range(7):
        await alice.slash(harness.channel, "imagine", prompt=f"picture {n}", seed=100 + n)
        await harness.wait_jobs()
    await bob.slash(harness.channel, "imagine", prompt="not alice's")
    await harness.wait_jobs()

    listing = await alice.slash(harness.channel, "history")
    assert listing.ephemeral
    (embed,) = listing.response.embeds
    assert embed.title == "Generations by alice"
    assert embed.footer.text == "Page 1 of 2 · 7 in all"
    lines = embed.description.split("\n")
    assert (
        "picture 6" in lines[0]
        and "picture 2" in embed.description
        and "picture 1" not in embed.description
    )
    assert "seed 106" in lines[1] and "done" in lines[1] and "<t:" in lines[1]
    rows = await harness.rows()
    newest = [r for r in rows if r.user_id == alice.id][-1]
    assert (
        f"https://discord.com/channels/{harness.guild.id}/{harness.channel.id}/{newest.message_id}"
        in lines[1]
    )
    assert "not alice's" not in embed.description

    buttons = listing.response.components[0]["components"]
    assert [(b["label"], b.get("disabled", False)) for b in buttons] == [
        ("◀ Newer", True),
        ("Older ▶", False),
    ]

    with pytest.raises(simcord.SetupError, match="not visible"):  # private to alice
        await bob.click(listing.response, label="Older ▶")

    await alice.click(listing.response, label="Older ▶")
    (embed,) = listing.response.embeds
    assert embed.footer.text == "Page 2 of 2 · 7 in all"
    assert "picture 1" in embed.description and "picture 0" in embed.description
    buttons = listing.response.components[0]["components"]
    assert [(b["label"], b.get("disabled", False)) for b in buttons] == [
        ("◀ Newer", False),
        ("Older ▶", True),
    ]

    far = await alice.slash(harness.channel, "history", page=9)
    assert far.response.embeds[0].footer.text == "Page 2 of 2 · 7 in all"


async def test_history_of_another_member_needs_manage_server(harness: Harness) -> None:
    alice, bob = harness.member("alice"), harness.member("bob")
    await alice.slash(harness.channel, "imagine", prompt="mine")
    await harness.wait_jobs()
    denied = await bob.slash(harness.channel, "history", user=alice)
    assert denied.ephemeral and "Manage Server" in denied.response.content
    allowed = await harness.admin.slash(harness.channel, "history", user=alice)
    assert allowed.response.embeds[0].title == "Generations by alice"
    assert "mine" in allowed.response.embeds[0].description
    empty = await bob.slash(harness.channel, "history")
    assert "No generations yet" in empty.response.embeds[0].description
