"""/quota: how many images are left today and when the count resets."""

from __future__ import annotations

from discord import app_commands
from discord.ext import commands

import db
from bot import errors, render
from bot.client import ImagineClient, imagine_client
from bot.imagine import utcnow
from bot.imagine.policy import is_exempt
from bot.interaction import Interaction


class QuotaCog(commands.Cog):
    def __init__(self, bot: ImagineClient) -> None:
        self.bot = bot

    @app_commands.command(name="quota", description="How many images you have left today")
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    @app_commands.allowed_installs(guilds=True, users=False)
    async def quota(self, interaction: Interaction) -> None:
        async with errors.replying(interaction):
            guilds = self.bot.guild_settings
            config = await guilds.config(interaction.guild_id)
            exempt = is_exempt(interaction.user, config)
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
            queue = await guilds.queue_limit(config)
            text = render.quota_text(
                in_dms=interaction.guild_id is None,
                used=status.used,
                limit=status.limit,
                remaining=status.remaining,
                resets_at=status.resets_at,
                exempt=exempt,
                active=active,
                queue_limit=queue.limit,
                ceiling_binds=queue.by_ceiling,
            )
            await errors.send_ephemeral(interaction, text)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(QuotaCog(imagine_client(bot)))
