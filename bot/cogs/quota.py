"""/quota: how many images are left today and when the count resets."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

import db
from bot import errors, render
from bot.jobs import utcnow

if TYPE_CHECKING:
    from bot.app import ImagineBot


class QuotaCog(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="quota", description="How many images you have left today")
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    @app_commands.allowed_installs(guilds=True, users=False)
    async def quota(self, interaction: discord.Interaction[ImagineBot]) -> None:
        async with errors.replying(interaction):
            jobs = self.bot.jobs
            config = await jobs.guild_config(interaction.guild_id)
            exempt = jobs.is_exempt(interaction.user, config)
            status = await db.quota_status(
                self.bot.db,
                guild_id=interaction.guild_id,
                user_id=interaction.user.id,
                daily_quota=None if exempt else config.daily_quota,
                reset_hour=self.bot.settings.quota_reset_hour,
                now=utcnow(),
            )
            active = await db.count_active(
                self.bot.db, guild_id=interaction.guild_id, user_id=interaction.user.id
            )
            where = "in direct messages" if interaction.guild_id is None else "in this server"
            if status.limit is None:
                why = "one of your roles is exempt" if exempt else "this server sets no daily limit"
                lines = [f"You can make as many images as you like {where}: {why}."]
                lines.append(f"Used today: **{status.used}**.")
            else:
                left = f"**{status.remaining}** of **{status.limit}**"
                lines = [
                    f"You have {left} images left today {where}.",
                    f"Used today: **{status.used}**. "
                    f"The count resets {render.reset_time(status.resets_at)}.",
                ]
            cap = config.max_queued
            if cap:
                lines.append(f"Waiting or being made now: **{active}** (at most {cap} at once).")
            elif active:
                lines.append(f"Waiting or being made now: **{active}**.")
            await errors.send_ephemeral(interaction, "\n".join(lines))


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(QuotaCog(bot))
