"""The real, unmodified discord.py client against the emulator, with a minimal bot of our own.

These tests prove the emulator speaks Discord's wire protocol the way discord.py 2.7 expects it:
login, command sync, a slash command acknowledged and edited with a multipart PNG upload, a
persistent button, 429 and 5xx retries, the 3-second window, dead tokens and gateway resumes.
The project bot's scenarios (``test_wire_scenarios.py``) build on exactly this.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import discord
import pytest
from discord import app_commands
from discord.ext import commands
from PIL import Image

from .conftest import point_discord_py_at
from .emulator import CB_DEFERRED_MESSAGE, CB_UPDATE_MESSAGE, DiscordEmulator
from .harness import png_dimensions, running

pytestmark = pytest.mark.usefixtures("discord_endpoints")


def _png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


class AgainView(discord.ui.View):
    """A persistent view: the custom_id alone routes clicks, so it survives a restart."""

    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Again", custom_id="demo:again", style=discord.ButtonStyle.primary)
    async def again(self, interaction: discord.Interaction, _: discord.ui.Button[Any]) -> None:
        await interaction.response.send_message(
            f"clicked by {interaction.user.name}", ephemeral=True
        )

    @discord.ui.button(label="Hide", custom_id="demo:hide", style=discord.ButtonStyle.secondary)
    async def hide(self, interaction: discord.Interaction, _: discord.ui.Button[Any]) -> None:
        await interaction.response.edit_message(content="hidden", view=None)


class NoteModal(discord.ui.Modal, title="A note"):
    note: discord.ui.TextInput[Any] = discord.ui.TextInput(label="Note", custom_id="note")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"noted: {self.note.value}", ephemeral=True)


class DemoBot(commands.Bot):
    """The smallest bot that does what /imagine does on the wire."""

    def __init__(self) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            guild_ready_timeout=0.05,
        )
        self.errors: list[BaseException] = []
        self.delay_ack = 0.0
        self.progress_edits = 2

        @self.tree.command(name="draw", description="Draw a square")
        @app_commands.describe(side="side in pixels")
        async def draw(
            interaction: discord.Interaction, side: app_commands.Range[int, 8, 256] = 32
        ) -> None:
            await asyncio.sleep(self.delay_ack)
            await interaction.response.defer(thinking=True)
            for step in range(self.progress_edits):
                await interaction.edit_original_response(content=f"drawing… {step + 1}")
            await interaction.edit_original_response(
                content=f"{side}×{side}",
                attachments=[discord.File(io.BytesIO(_png(side)), "square.png")],
                view=AgainView(),
            )

        style = app_commands.Group(name="style", description="Manage styles")

        @style.command(name="add", description="Add a style")
        async def style_add(interaction: discord.Interaction, name: str, template: str) -> None:
            await interaction.response.send_message(f"added {name}: {template}", ephemeral=True)

        @style.command(name="show", description="Show a style")
        async def style_show(interaction: discord.Interaction, name: str) -> None:
            await interaction.response.send_message(f"style {name}")

        @style_show.autocomplete("name")
        async def style_names(
            interaction: discord.Interaction, current: str
        ) -> list[app_commands.Choice[str]]:
            names = ["anime", "cinematic", "comic", "line-art"]
            return [app_commands.Choice(name=n, value=n) for n in names if current in n]

        self.tree.add_command(style)

        @self.tree.command(name="form", description="Open a form")
        async def form(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(NoteModal())

        @self.tree.error
        async def on_tree_error(
            interaction: discord.Interaction, error: app_commands.AppCommandError
        ) -> None:
            self.errors.append(getattr(error, "original", error))

    async def setup_hook(self) -> None:
        self.add_view(AgainView())
        await self.tree.sync()


async def _start(emu: DiscordEmulator) -> DemoBot:
    point_discord_py_at(emu)
    return DemoBot()


async def _final(emu: DiscordEmulator, interaction: Any) -> Any:
    return await emu.wait_until(
        lambda: (m := emu.response_message(interaction)) is not None and m.attachments and m,
        what="the final edit with the image",
    )


async def test_login_sync_slash_command_and_multipart_edit(emulator: DiscordEmulator) -> None:
    bot = await _start(emulator)
    async with running(bot, emulator.token):
        assert emulator.identifies == 1
        assert sorted(c["name"] for c in emulator.global_commands) == ["draw", "form", "style"]
        user = emulator.add_user("alice")
        interaction = await emulator.slash(user, "draw", side=48)
        await emulator.wait_acked(interaction)
        assert interaction.callback_type == CB_DEFERRED_MESSAGE
        message = await _final(emulator, interaction)

    # What alice sees: one message, edited in place, ending with the 48×48 PNG and a button.
    assert emulator.visible_messages(viewer=user) == [message]
    assert [v.content for v in message.history] == ["", "drawing… 1", "drawing… 2", "48×48"]
    assert message.content == "48×48"
    assert not message.loading
    (attachment,) = message.attachments
    assert attachment.filename == "square.png"
    assert png_dimensions(attachment.data) == (48, 48)
    assert [b["label"] for b in message.buttons()] == ["Again", "Hide"]
    # On the wire: the final edit was multipart with payload_json and files[0].
    (final_edit,) = [
        r for r in emulator.requests_matching("PATCH", r"/messages/@original$") if r.files
    ]
    assert [name for name, _, _ in final_edit.files] == ["files[0]"]
    assert final_edit.json["attachments"] == [{"id": 0, "filename": "square.png"}]
    assert interaction.ack_latency is not None and interaction.ack_latency < 3
    assert emulator.unknown_routes == []
    assert bot.errors == []


async def test_buttons_answer_and_keep_working_after_a_restart(emulator: DiscordEmulator) -> None:
    user = emulator.add_user("bob")
    async with running(await _start(emulator), emulator.token):
        first = await emulator.slash(user, "draw")
        message = await _final(emulator, first)
        click = await emulator.click(user, message, label="Again")
        await emulator.wait_acked(click)
        (reply,) = emulator.messages_for(click)
        assert reply.ephemeral and reply.content == "clicked by bob"
        assert emulator.visible_messages() == [message]  # nobody else sees the ephemeral

    # A new process (new bot object, new gateway session), same Discord: old buttons still work.
    async with running(await _start(emulator), emulator.token):
        assert emulator.identifies == 2
        click = await emulator.click(user, message, label="Hide")
        await emulator.wait_acked(click)
        assert click.callback_type == CB_UPDATE_MESSAGE
    assert message.content == "hidden" and message.buttons() == []


@pytest.mark.parametrize("status", [429, 500])
async def test_rate_limited_and_failed_edits_are_retried_once(
    emulator: DiscordEmulator, status: int
) -> None:
    bot = await _start(emulator)
    bot.progress_edits = 1
    user = emulator.add_user()
    # The first progress edit gets the error; discord.py must retry it, and then go on.
    emulator.fail_next("PATCH", r"/webhooks/\d+/[^/]+/messages/@original$", status=status)
    async with running(bot, emulator.token):
        interaction = await emulator.slash(user, "draw", side=16)
        message = await _final(emulator, interaction)
    edits = emulator.requests_matching("PATCH", r"/messages/@original$")
    assert [r.status for r in edits] == [status, 200, 200]
    assert edits[0].json == edits[1].json  # the same edit, sent again
    assert [v.content for v in message.history] == ["", "drawing… 1", "16×16"]
    assert len(emulator.visible_messages()) == 1
    assert bot.errors == []


async def test_429_is_retried_only_with_via_header(emulator: DiscordEmulator) -> None:
    """Discord's 429s carry ``Via``; a bare one is what discord.py takes for a Cloudflare ban."""
    bot = await _start(emulator)
    async with running(bot, emulator.token):
        channel = bot.get_channel(emulator.channel.id)
        assert isinstance(channel, discord.TextChannel)
        emulator.fail_next("POST", r"/channels/\d+/messages$", status=429, retry_after=0.1)
        sent = await channel.send("hello")
        assert emulator.messages[sent.id].content == "hello"
        emulator.fail_next("POST", r"/channels/\d+/messages$", status=429, via=False)
        with pytest.raises(discord.HTTPException) as banned:
            await channel.send("again")
        assert banned.value.status == 429
    statuses = [r.status for r in emulator.requests_matching("POST", r"/channels/")]
    assert statuses == [429, 200, 429]
    assert [m.content for m in emulator.visible_messages()] == ["hello"]


async def test_late_acknowledgement_is_refused_like_discord(emulator: DiscordEmulator) -> None:
    emulator.ack_window_s = 0.3  # Discord's window is 3 s; shortened to keep the test quick
    bot = await _start(emulator)
    bot.delay_ack = 0.5
    async with running(bot, emulator.token):
        interaction = await emulator.slash(emulator.add_user(), "draw")
        await emulator.wait_acked(interaction)
        await emulator.wait_until(lambda: bot.errors, what="the bot to see the error")
    assert interaction.ack_status == 404 and not interaction.answered
    (error,) = bot.errors
    assert isinstance(error, discord.NotFound) and error.code == 10062


async def test_dead_token_then_channel_message(emulator: DiscordEmulator) -> None:
    bot = await _start(emulator)
    user = emulator.add_user()
    async with running(bot, emulator.token):
        interaction = await emulator.slash(user, "draw")
        await _final(emulator, interaction)
        emulator.expire_interaction(interaction)
        tree_interaction_token = interaction.token
        webhook = discord.Webhook.from_url(
            f"https://discord.com/api/webhooks/{emulator.application_id}/{tree_interaction_token}",
            client=bot,
        )
        with pytest.raises(discord.HTTPException) as caught:
            await webhook.edit_message(
                emulator.response_message(interaction).id,  # type: ignore[union-attr]
                content="late",
            )
        assert caught.value.status == 401 and caught.value.code == 50027
        # The bot's own channel API still works: the delivery path for late images.
        channel = bot.get_channel(emulator.channel.id)
        assert isinstance(channel, discord.TextChannel)
        original = emulator.response_message(interaction)
        assert original is not None
        sent = await channel.send(
            f"{user.mention} here it is",
            file=discord.File(io.BytesIO(_png(8)), "late.png"),
            reference=discord.MessageReference(
                message_id=original.id, channel_id=channel.id, fail_if_not_exists=False
            ),
            allowed_mentions=discord.AllowedMentions(users=[discord.Object(user.id)]),
        )
    stored = emulator.messages[sent.id]
    assert stored.message_reference is not None
    assert stored.message_reference["message_id"] == str(original.id)
    assert stored.mentions == [user.id]
    assert png_dimensions(stored.attachments[0].data) == (8, 8)


@pytest.mark.parametrize("how", ["op7", "close-4000", "tcp-cut"])
async def test_gateway_reconnect_resumes_and_replays_missed_events(
    emulator: DiscordEmulator, how: str
) -> None:
    bot = await _start(emulator)
    user = emulator.add_user()
    async with running(bot, emulator.token):
        if how == "op7":
            await emulator.request_reconnect()
        else:
            await emulator.drop_gateway(code=4000 if how == "close-4000" else None)
        # Sent while the socket may be down: Discord buffers it and replays it on RESUME.
        interaction = await emulator.slash(user, "draw", side=8)
        message = await _final(emulator, interaction)
        await emulator.wait_until(lambda: emulator.resumes >= 1, what="a RESUME")
    assert emulator.identifies == 1  # resumed, not re-identified
    assert png_dimensions(message.attachments[0].data) == (8, 8)
    assert interaction.answered


async def test_invalid_message_bodies_are_rejected_like_discord(emulator: DiscordEmulator) -> None:
    bot = await _start(emulator)
    async with running(bot, emulator.token):
        channel = bot.get_channel(emulator.channel.id)
        assert isinstance(channel, discord.TextChannel)
        with pytest.raises(discord.HTTPException) as too_long:
            await channel.send("x" * 2001)
        assert too_long.value.code == 50035
        with pytest.raises(discord.HTTPException) as big_embed:
            await channel.send(embed=discord.Embed(title="t" * 257))
        assert big_embed.value.code == 50035
        sent = await channel.send("@everyone look", allowed_mentions=discord.AllowedMentions.none())
    assert not emulator.messages[sent.id].mention_everyone
    assert len(emulator.visible_messages()) == 1


async def test_subcommands_autocomplete_and_modals(emulator: DiscordEmulator) -> None:
    user = emulator.add_user("carol")
    async with running(await _start(emulator), emulator.token):
        choices = await emulator.autocomplete(user, "style", "name", sub="show", name="c")
        assert [c["value"] for c in choices] == ["cinematic", "comic"]
        added = await emulator.slash(user, "style", sub="add", name="x", template="{prompt}!")
        await emulator.wait_acked(added)
        assert [m.content for m in emulator.messages_for(added)] == ["added x: {prompt}!"]
        opened = await emulator.wait_acked(await emulator.slash(user, "form"))
        assert opened.modal is not None and opened.modal["title"] == "A note"
        submitted = await emulator.wait_acked(await emulator.submit_modal(opened, {"note": "hi"}))
        (reply,) = emulator.messages_for(submitted)
        assert reply.content == "noted: hi" and reply.ephemeral
    with pytest.raises(ValueError, match="no option"):
        await emulator.slash(user, "draw", colour="red")


async def test_a_lost_response_does_not_duplicate_a_channel_message(
    emulator: DiscordEmulator,
) -> None:
    """A 500 after Discord already created the message makes discord.py send it again. discord.py
    2.7 sends every channel message with a random ``nonce`` and ``enforce_nonce``, so Discord
    answers the retry with the first message; a bot that re-sends on its own needs a nonce of
    its own (the same one each time) to get the same protection."""
    bot = await _start(emulator)
    async with running(bot, emulator.token):
        channel = bot.get_channel(emulator.channel.id)
        assert isinstance(channel, discord.TextChannel)
        emulator.fail_next("POST", r"/channels/\d+/messages$", status=500, after_commit=True)
        first = await channel.send("retried by discord.py")
        again = await channel.send("re-sent by the bot", nonce=42)
        same = await channel.send("re-sent by the bot", nonce=42)
    posts = emulator.requests_matching("POST", r"/channels/\d+/messages$")
    assert [r.status for r in posts] == [500, 200, 200, 200]
    assert posts[0].json["nonce"] == posts[1].json["nonce"] and posts[0].json["enforce_nonce"]
    assert same.id == again.id
    assert [m.id for m in emulator.visible_messages()] == [first.id, again.id]
