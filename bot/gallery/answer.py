"""The Discord side of a gallery link: what /gallery and the Gallery button under /history
answer (ephemerally: the link is a credential).

The link is signed for the member who asked and the server they asked in (their DMs when asked
there), and records whether they could manage the server at that moment; see ``bot.gallery.auth``.
"""

from __future__ import annotations

import re

import discord

from bot import errors
from bot.client import imagine_client
from bot.gallery.wiring import admins_for, links_for
from bot.interaction import Interaction, ViewButton
from db import gallery as gallery_db

GALLERY_OFF = (
    "The web gallery is off on this bot: its web server is turned off "
    "(IMAGINE_HEALTH_PORT=0). Ask the bot's operator."
)


async def gallery_answer(
    interaction: Interaction,
) -> tuple[str, discord.ui.View]:
    """The ephemeral text and link button for the member who asked, where they asked."""
    bot = imagine_client(interaction.client)
    if not bot.settings.health_port:
        raise errors.UserError(GALLERY_OFF)
    guild_id = interaction.guild_id
    admin = guild_id is not None and interaction.permissions.manage_guild
    if guild_id is not None:  # Discord's word of this moment: the link's pages start from it
        admins_for(bot).remember(guild_id, interaction.user.id, admin)
    links = links_for(bot)
    epoch = await gallery_db.gallery_links_epoch(bot.db, guild_id) if bot.db is not None else 0
    url = links.url(guild_id=guild_id, user_id=interaction.user.id, admin=admin, epoch=epoch)
    hours = max(1, round(links.ttl_s / 3600))
    if guild_id is None:
        what = "your images from our direct messages"
    elif admin:
        what = "every image made in this server (you can delete any of them)"
    elif bot.db is not None and await gallery_db.gallery_public(bot.db, guild_id):
        what = "every image made in this server"
    else:
        what = "your images from this server (its admins keep the whole gallery private)"
    text = (
        f"Your gallery link shows {what}. It works for {hours} h and only for you: "
        "don't share it.\n<" + url + ">"
    )
    view = discord.ui.View(timeout=None)
    view.add_item(discord.ui.Button(label="Open gallery", url=url, emoji="🖼️"))
    return text, view


class GalleryButton(discord.ui.DynamicItem[ViewButton], template=r"imagine:gallery"):
    """The Gallery button under /history: answers with a fresh link for whoever clicks it."""

    def __init__(self) -> None:
        super().__init__(
            discord.ui.Button(
                label="Gallery",
                emoji="🖼️",
                style=discord.ButtonStyle.secondary,
                custom_id="imagine:gallery",
            )
        )

    @classmethod
    async def from_custom_id(
        cls,
        interaction: Interaction,
        item: discord.ui.Item[discord.ui.View],
        match: re.Match[str],
    ) -> GalleryButton:
        return cls()

    async def callback(self, interaction: Interaction) -> None:
        try:
            async with errors.replying(interaction):
                text, view = await gallery_answer(interaction)
                await errors.send_ephemeral(interaction, text, view=view)
        except Exception as exc:
            await errors.handle(interaction, exc)
