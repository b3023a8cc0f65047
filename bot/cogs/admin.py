"""/limits and /blocked: a server's quotas, queue caps, exempt roles, channels and words, and
its web gallery (open to members or not; every link given out ended at once).

Every change goes through ``bot.guild_settings`` (``bot.guild_settings.GuildSettings``), which keeps
/imagine's cache of these settings right by itself.
"""

from __future__ import annotations

from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

import db
from bot import errors, render
from bot.client import ImagineClient, imagine_client
from bot.cogs._admin import ADMIN_PERMISSIONS, require_manage_guild
from bot.errors import UserError
from bot.interaction import Interaction

MAX_BLOCKED_WORDS = 500

AnyChannel = discord.TextChannel | discord.ForumChannel | discord.VoiceChannel | discord.Thread


class AdminCog(commands.Cog):
    limits = app_commands.Group(
        name="limits",
        description="Quotas, queue caps, exempt roles and allowed channels",
        default_permissions=ADMIN_PERMISSIONS,
        guild_only=True,
    )
    exempt = app_commands.Group(
        name="exempt", description="Roles without a daily quota", parent=limits
    )
    channels = app_commands.Group(
        name="channels", description="Where /imagine may be used", parent=limits
    )
    blocked = app_commands.Group(
        name="blocked",
        description="Words that refuse a prompt",
        default_permissions=ADMIN_PERMISSIONS,
        guild_only=True,
    )

    def __init__(self, bot: ImagineClient) -> None:
        self.bot = bot

    async def interaction_check(self, interaction: Interaction) -> bool:
        return require_manage_guild(interaction)

    async def _show(
        self,
        interaction: Interaction,
        text: str | None,
        config: db.GuildConfig,
    ) -> None:
        """Every /limits answer: what changed, then everything that applies here now."""
        embed = render.limits_embed(config, ceiling=await self.bot.guild_settings.ceiling())
        await errors.send_ephemeral(interaction, text, embed=embed)

    # ------------------------------------------------------------------ /limits
    @limits.command(name="show", description="Show this server's limits")
    async def show(self, interaction: Interaction) -> None:
        assert interaction.guild_id is not None
        await self._show(
            interaction, None, await self.bot.guild_settings.config(interaction.guild_id)
        )

    @limits.command(
        name="set", description="Set the daily quota and how many images may wait at once"
    )
    @app_commands.describe(
        daily_quota="Images per member per day (0: no limit)",
        max_queued="Images one member may have waiting or running at once (0: no limit)",
    )
    async def set_(
        self,
        interaction: Interaction,
        daily_quota: app_commands.Range[int, 0, 10_000] | None = None,
        max_queued: app_commands.Range[int, 0, 100] | None = None,
    ) -> None:
        async with errors.replying(interaction):
            assert interaction.guild_id is not None
            if daily_quota is None and max_queued is None:
                raise UserError("Give a `daily_quota`, a `max_queued`, or both.")
            config = await self.bot.guild_settings.update_limits(
                interaction.guild_id, daily_quota=daily_quota, max_queued=max_queued
            )
            await self._show(interaction, "Limits updated.", config)

    @limits.command(name="reset", description="Go back to the bot's default quota and queue cap")
    async def reset(self, interaction: Interaction) -> None:
        assert interaction.guild_id is not None
        config = await self.bot.guild_settings.reset_limits(interaction.guild_id)
        await self._show(interaction, "Back to the bot's defaults.", config)

    @limits.command(name="gallery", description="Let members see every image made here in /gallery")
    @app_commands.describe(
        state="on: members see everyone's images in /gallery; off (default): only their own"
    )
    async def gallery(self, interaction: Interaction, state: Literal["on", "off"]) -> None:
        assert interaction.guild_id is not None
        public = state == "on"
        changed = await self.bot.guild_settings.set_gallery_public(interaction.guild_id, public)
        now = "now" if changed else "already"
        if public:
            text = f"Members {now} see every image made here in /gallery."
        else:
            text = f"Members {now} see only their own images in /gallery (admins see all)."
        await errors.send_ephemeral(interaction, text)

    @limits.command(
        name="gallery_revoke", description="End every /gallery link given out in this server"
    )
    async def gallery_revoke(self, interaction: Interaction) -> None:
        assert interaction.guild_id is not None
        await self.bot.guild_settings.revoke_gallery_links(interaction.guild_id)
        await errors.send_ephemeral(
            interaction,
            "Every gallery link given out in this server so far has stopped working. Members "
            "(you too) get a new one with /gallery.",
        )

    @exempt.command(name="add", description="Members with this role have no daily quota")
    async def exempt_add(self, interaction: Interaction, role: discord.Role) -> None:
        async with errors.replying(interaction):
            assert interaction.guild_id is not None
            changed, config = await self.bot.guild_settings.add_exempt_role(
                interaction.guild_id, role.id
            )
            if not changed:
                raise UserError(f"{role.mention} is already exempt.")
            await self._show(interaction, f"{role.mention} now has no daily quota.", config)

    @exempt.command(
        name="remove", description="Members with this role follow the daily quota again"
    )
    async def exempt_remove(self, interaction: Interaction, role: discord.Role) -> None:
        async with errors.replying(interaction):
            assert interaction.guild_id is not None
            changed, config = await self.bot.guild_settings.remove_exempt_role(
                interaction.guild_id, role.id
            )
            if not changed:
                raise UserError(f"{role.mention} is not exempt.")
            await self._show(interaction, f"{role.mention} follows the daily quota again.", config)

    @channels.command(
        name="add", description="Allow /imagine in a channel (then only in the listed ones)"
    )
    async def channels_add(self, interaction: Interaction, channel: AnyChannel) -> None:
        async with errors.replying(interaction):
            assert interaction.guild_id is not None
            changed, config = await self.bot.guild_settings.allow_channel(
                interaction.guild_id, channel.id
            )
            if not changed:
                raise UserError(f"{channel.mention} is already allowed.")
            await self._show(interaction, f"/imagine now works in {channel.mention}.", config)

    @channels.command(name="remove", description="Stop allowing /imagine in a channel")
    async def channels_remove(self, interaction: Interaction, channel: AnyChannel) -> None:
        async with errors.replying(interaction):
            assert interaction.guild_id is not None
            changed, config = await self.bot.guild_settings.disallow_channel(
                interaction.guild_id, channel.id
            )
            if not changed:
                raise UserError(f"{channel.mention} is not in the list.")
            note = (
                ""
                if config.allowed_channels
                else " The list is empty, so /imagine works in every channel again."
            )
            await self._show(interaction, f"Removed {channel.mention}.{note}", config)

    @channels.command(name="clear", description="Allow /imagine in every channel again")
    async def channels_clear(self, interaction: Interaction) -> None:
        assert interaction.guild_id is not None
        config = await self.bot.guild_settings.allow_every_channel(interaction.guild_id)
        await self._show(interaction, "/imagine works in every channel again.", config)

    # ------------------------------------------------------------------ /blocked
    @blocked.command(name="add", description="Refuse prompts that contain this word or phrase")
    @app_commands.describe(word="A word or phrase (whole words, any letter case)")
    async def blocked_add(self, interaction: Interaction, word: str) -> None:
        async with errors.replying(interaction):
            assert interaction.guild_id is not None
            cleaned = " ".join(word.split())
            if not cleaned:
                raise UserError("Give a word or phrase to block.")
            if len(cleaned) > 100:
                raise UserError("Blocked words can be at most 100 characters.")
            config = await self.bot.guild_settings.config(interaction.guild_id)
            if len(config.blocked_words) >= MAX_BLOCKED_WORDS:
                raise UserError(
                    f"This server already blocks {MAX_BLOCKED_WORDS} words; remove some first."
                )
            if not await self.bot.guild_settings.add_blocked_word(interaction.guild_id, cleaned):
                raise UserError(f"||{render.shown(cleaned, 100)}|| is already blocked.")
            await errors.send_ephemeral(
                interaction, f"Prompts with ||{render.shown(cleaned, 100)}|| are now refused."
            )

    @blocked.command(name="remove", description="Allow a blocked word again")
    @app_commands.describe(word="The word or phrase to allow again")
    async def blocked_remove(self, interaction: Interaction, word: str) -> None:
        async with errors.replying(interaction):
            assert interaction.guild_id is not None
            cleaned = " ".join(word.split())
            removed = bool(cleaned) and await self.bot.guild_settings.remove_blocked_word(
                interaction.guild_id, cleaned
            )
            if not removed:
                raise UserError(f"||{render.shown(cleaned, 100)}|| is not blocked.")
            await errors.send_ephemeral(
                interaction, f"||{render.shown(cleaned, 100)}|| is allowed again."
            )

    @blocked.command(name="list", description="Words that refuse a prompt here")
    async def blocked_list(self, interaction: Interaction) -> None:
        assert interaction.guild_id is not None
        config = await self.bot.guild_settings.config(interaction.guild_id)
        if not config.blocked_words:
            await errors.send_ephemeral(
                interaction, "No words are blocked here. Add one with `/blocked add`."
            )
            return
        await errors.send_ephemeral(
            interaction, embed=render.blocked_words_embed(config.blocked_words)
        )


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(AdminCog(imagine_client(bot)))
