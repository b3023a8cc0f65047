"""/history: a member's own generations, newest first, with paging buttons."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot import errors
from bot.client import ImagineClient, imagine_client
from bot.history.views import HistoryButton, can_view_others, history_page
from bot.interaction import Interaction


class HistoryCog(commands.Cog):
    def __init__(self, bot: ImagineClient) -> None:
        self.bot = bot

    @app_commands.command(name="history", description="Your recent images here, newest first")
    @app_commands.describe(
        user="Someone else's history (needs Manage Server)",
        page="Which page to open (5 images per page)",
    )
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    @app_commands.allowed_installs(guilds=True, users=False)
    async def history(
        self,
        interaction: Interaction,
        user: discord.User | None = None,
        page: app_commands.Range[int, 1, 10_000] = 1,
    ) -> None:
        async with errors.replying(interaction):
            target = user or interaction.user
            if target.id != interaction.user.id and not can_view_others(interaction):
                raise errors.UserError(
                    "You need the **Manage Server** permission to see another member's history."
                )
            embed, view = await history_page(
                self.bot,
                viewer_id=interaction.user.id,
                target_id=target.id,
                target_name=target.display_name,
                guild_id=interaction.guild_id,
                page=page,
            )
            await interaction.response.send_message(
                embed=embed, view=view, ephemeral=True, allowed_mentions=errors.NO_MENTIONS
            )


async def setup(bot: commands.Bot) -> None:
    bot.add_dynamic_items(HistoryButton)
    await bot.add_cog(HistoryCog(imagine_client(bot)))
