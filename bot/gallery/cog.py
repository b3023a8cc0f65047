"""/gallery: a private, expiring link to the web gallery of the server (or of the member's
DMs). The answer itself is built in ``bot.gallery.answer``, shared with the Gallery button."""

from __future__ import annotations

from discord import app_commands
from discord.ext import commands

from bot import errors
from bot.client import ImagineClient, imagine_client
from bot.gallery.answer import GalleryButton, gallery_answer
from bot.interaction import Interaction


class GalleryCog(commands.Cog):
    def __init__(self, bot: ImagineClient) -> None:
        self.bot = bot

    @app_commands.command(
        name="gallery", description="A private link to the web gallery of images made here"
    )
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    @app_commands.allowed_installs(guilds=True, users=False)
    async def gallery(self, interaction: Interaction) -> None:
        async with errors.replying(interaction):
            text, view = await gallery_answer(interaction)
            await errors.send_ephemeral(interaction, text, view=view)


async def setup(bot: commands.Bot) -> None:
    bot.add_dynamic_items(GalleryButton)
    await bot.add_cog(GalleryCog(imagine_client(bot)))
