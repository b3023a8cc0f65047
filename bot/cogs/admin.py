"""/limits and /blocked: a server's quotas, queue caps, exempt roles, channels and words."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

import db
from bot import errors, render
from bot.cogs._admin import ADMIN_PERMISSIONS, require_manage_guild
from bot.errors import UserError

if TYPE_CHECKING:
    from bot.app import ImagineBot

MAX_BLOCKED_WORDS = 500


def limits_embed(config: db.GuildConfig) -> discord.Embed:
    embed = discord.Embed(title="Image limits in this server", colour=render.COLOR_INFO)
    quota = "no limit" if not config.daily_quota else f"{config.daily_quota} per member per day"
    queued = "no limit" if not config.max_queued else f"{config.max_queued} per member"
    embed.add_field(
        name="Daily quota",
        value=quota + ("" if config.custom_quota else " (bot default)"),
        inline=True,
    )
    embed.add_field(
        name="Waiting or running at once",
        value=queued + ("" if config.custom_max_queued else " (bot default)"),
        inline=True,
    )
    roles = ", ".join(f"<@&{rid}>" for rid in config.exempt_roles) or "none"
    embed.add_field(
        name="Roles without a daily quota", value=render.clip(roles, 1024), inline=False
    )
    channels = ", ".join(f"<#{cid}>" for cid in config.allowed_channels) or "every channel"
    embed.add_field(
        name="Channels where /imagine works", value=render.clip(channels, 1024), inline=False
    )
    embed.add_field(
        name="Blocked words",
        value=f"{len(config.blocked_words)} (see `/blocked list`)",
        inline=True,
    )
    return embed


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

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    async def interaction_check(self, interaction: discord.Interaction[ImagineBot]) -> bool:  # type: ignore[override]
        return require_manage_guild(interaction)

    async def _config(self, guild_id: int) -> db.GuildConfig:
        return await self.bot.jobs.guild_config(guild_id)

    async def _update(
        self,
        guild_id: int,
        *,
        daily_quota: int | None = None,
        max_queued: int | None = None,
        allowed_channels: Sequence[int] | None = None,
        exempt_roles: Sequence[int] | None = None,
    ) -> db.GuildConfig:
        settings = self.bot.settings
        try:
            return await db.update_guild_config(
                self.bot.db,
                guild_id,
                default_quota=settings.default_daily_quota,
                default_max_queued=settings.default_max_queued,
                daily_quota=daily_quota,
                max_queued=max_queued,
                allowed_channels=allowed_channels,
                exempt_roles=exempt_roles,
            )
        finally:
            self.bot.jobs.forget(guild_id)

    # ------------------------------------------------------------------ /limits
    @limits.command(name="show", description="Show this server's limits")
    async def show(self, interaction: discord.Interaction[ImagineBot]) -> None:
        assert interaction.guild_id is not None
        await errors.send_ephemeral(
            interaction, embed=limits_embed(await self._config(interaction.guild_id))
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
        interaction: discord.Interaction[ImagineBot],
        daily_quota: app_commands.Range[int, 0, 10_000] | None = None,
        max_queued: app_commands.Range[int, 0, 100] | None = None,
    ) -> None:
        async with errors.replying(interaction):
            assert interaction.guild_id is not None
            if daily_quota is None and max_queued is None:
                raise UserError("Give a `daily_quota`, a `max_queued`, or both.")
            config = await self._update(
                interaction.guild_id, daily_quota=daily_quota, max_queued=max_queued
            )
            await errors.send_ephemeral(interaction, "Limits updated.", embed=limits_embed(config))

    @limits.command(name="reset", description="Go back to the bot's default quota and queue cap")
    async def reset(self, interaction: discord.Interaction[ImagineBot]) -> None:
        assert interaction.guild_id is not None
        settings = self.bot.settings
        config = await db.reset_guild_limits(
            self.bot.db,
            interaction.guild_id,
            default_quota=settings.default_daily_quota,
            default_max_queued=settings.default_max_queued,
        )
        self.bot.jobs.forget(interaction.guild_id)
        await errors.send_ephemeral(
            interaction, "Back to the bot's defaults.", embed=limits_embed(config)
        )

    @exempt.command(name="add", description="Members with this role have no daily quota")
    async def exempt_add(
        self, interaction: discord.Interaction[ImagineBot], role: discord.Role
    ) -> None:
        async with errors.replying(interaction):
            assert interaction.guild_id is not None
            config = await self._config(interaction.guild_id)
            if role.id in config.exempt_roles:
                raise UserError(f"{role.mention} is already exempt.")
            config = await self._update(
                interaction.guild_id, exempt_roles=[*config.exempt_roles, role.id]
            )
            await errors.send_ephemeral(
                interaction, f"{role.mention} now has no daily quota.", embed=limits_embed(config)
            )

    @exempt.command(
        name="remove", description="Members with this role follow the daily quota again"
    )
    async def exempt_remove(
        self, interaction: discord.Interaction[ImagineBot], role: discord.Role
    ) -> None:
        async with errors.replying(interaction):
            assert interaction.guild_id is not None
            config = await self._config(interaction.guild_id)
            if role.id not in config.exempt_roles:
                raise UserError(f"{role.mention} is not exempt.")
            remaining = [rid for rid in config.exempt_roles if rid != role.id]
            config = await self._update(interaction.guild_id, exempt_roles=remaining)
            await errors.send_ephemeral(
                interaction,
                f"{role.mention} follows the daily quota again.",
                embed=limits_embed(config),
            )

    @channels.command(
        name="add", description="Allow /imagine in a channel (then only in the listed ones)"
    )
    async def channels_add(
        self,
        interaction: discord.Interaction[ImagineBot],
        channel: discord.TextChannel | discord.ForumChannel | discord.VoiceChannel | discord.Thread,
    ) -> None:
        async with errors.replying(interaction):
            assert interaction.guild_id is not None
            config = await self._config(interaction.guild_id)
            if channel.id in config.allowed_channels:
                raise UserError(f"{channel.mention} is already allowed.")
            config = await self._update(
                interaction.guild_id, allowed_channels=[*config.allowed_channels, channel.id]
            )
            await errors.send_ephemeral(
                interaction, f"/imagine now works in {channel.mention}.", embed=limits_embed(config)
            )

    @channels.command(name="remove", description="Stop allowing /imagine in a channel")
    async def channels_remove(
        self,
        interaction: discord.Interaction[ImagineBot],
        channel: discord.TextChannel | discord.ForumChannel | discord.VoiceChannel | discord.Thread,
    ) -> None:
        async with errors.replying(interaction):
            assert interaction.guild_id is not None
            config = await self._config(interaction.guild_id)
            if channel.id not in config.allowed_channels:
                raise UserError(f"{channel.mention} is not in the list.")
            remaining = [cid for cid in config.allowed_channels if cid != channel.id]
            config = await self._update(interaction.guild_id, allowed_channels=remaining)
            note = (
                "" if remaining else " The list is empty, so /imagine works in every channel again."
            )
            await errors.send_ephemeral(
                interaction, f"Removed {channel.mention}.{note}", embed=limits_embed(config)
            )

    @channels.command(name="clear", description="Allow /imagine in every channel again")
    async def channels_clear(self, interaction: discord.Interaction[ImagineBot]) -> None:
        assert interaction.guild_id is not None
        config = await self._update(interaction.guild_id, allowed_channels=[])
        await errors.send_ephemeral(
            interaction, "/imagine works in every channel again.", embed=limits_embed(config)
        )

    # ------------------------------------------------------------------ /blocked
    @blocked.command(name="add", description="Refuse prompts that contain this word or phrase")
    @app_commands.describe(word="A word or phrase (whole words, any letter case)")
    async def blocked_add(self, interaction: discord.Interaction[ImagineBot], word: str) -> None:
        async with errors.replying(interaction):
            assert interaction.guild_id is not None
            cleaned = " ".join(word.split())
            if not cleaned:
                raise UserError("Give a word or phrase to block.")
            if len(cleaned) > 100:
                raise UserError("Blocked words can be at most 100 characters.")
            config = await self._config(interaction.guild_id)
            if len(config.blocked_words) >= MAX_BLOCKED_WORDS:
                raise UserError(
                    f"This server already blocks {MAX_BLOCKED_WORDS} words; remove some first."
                )
            added = await db.add_blocked_word(self.bot.db, interaction.guild_id, cleaned)
            self.bot.jobs.forget(interaction.guild_id)
            if not added:
                raise UserError(f"||{render.shown(cleaned, 100)}|| is already blocked.")
            await errors.send_ephemeral(
                interaction, f"Prompts with ||{render.shown(cleaned, 100)}|| are now refused."
            )

    @blocked.command(name="remove", description="Allow a blocked word again")
    @app_commands.describe(word="The word or phrase to allow again")
    async def blocked_remove(self, interaction: discord.Interaction[ImagineBot], word: str) -> None:
        async with errors.replying(interaction):
            assert interaction.guild_id is not None
            cleaned = " ".join(word.split())
            removed = bool(cleaned) and await db.remove_blocked_word(
                self.bot.db, interaction.guild_id, cleaned
            )
            self.bot.jobs.forget(interaction.guild_id)
            if not removed:
                raise UserError(f"||{render.shown(cleaned, 100)}|| is not blocked.")
            await errors.send_ephemeral(
                interaction, f"||{render.shown(cleaned, 100)}|| is allowed again."
            )

    @blocked.command(name="list", description="Words that refuse a prompt here")
    async def blocked_list(self, interaction: discord.Interaction[ImagineBot]) -> None:
        assert interaction.guild_id is not None
        config = await self._config(interaction.guild_id)
        if not config.blocked_words:
            await errors.send_ephemeral(
                interaction, "No words are blocked here. Add one with `/blocked add`."
            )
            return
        words = ", ".join(f"||{render.shown(w, 100)}||" for w in config.blocked_words)
        embed = discord.Embed(
            title=f"Blocked words ({len(config.blocked_words)})",
            description=render.clip(words, 4000),
            colour=render.COLOR_INFO,
        )
        await errors.send_ephemeral(interaction, embed=embed)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(AdminCog(bot))
