"""/forget-me: a member erases everything the bot keeps about them, after a confirmation."""

from __future__ import annotations

from discord import app_commands
from discord.ext import commands

from bot import errors, render, views
from bot.client import ImagineClient, imagine_client
from bot.interaction import Interaction


class PrivacyCog(commands.Cog):
    def __init__(self, bot: ImagineClient) -> None:
        self.bot = bot

    @app_commands.command(
        name="forget-me",
        description="Erase all your stored images and your history, in every server (asks first)",
    )
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    @app_commands.allowed_installs(guilds=True, users=False)
    async def forget_me(self, interaction: Interaction) -> None:
        """Only asks: the erasing happens on the confirmation button (``views.EraseButton``)."""
        await interaction.response.send_message(
            render.erase_question_text(),
            view=views.erase_view(interaction.user.id),
            ephemeral=True,
            allowed_mentions=errors.NO_MENTIONS,
        )


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(PrivacyCog(imagine_client(bot)))
