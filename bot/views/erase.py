"""The confirmation of /forget-me: erase everything the bot keeps about a member, or not.

The buttons carry the member's id (``imagine:erase:<user>:<yes|no>``), so they work after a
restart too, and only that member can press them.
"""

from __future__ import annotations

import logging
import re

import discord

from bot import errors, render
from bot.client import imagine_client
from bot.interaction import Interaction, ViewButton
from bot.views.base import Guarded

logger = logging.getLogger(__name__)


class EraseButton(
    Guarded,
    discord.ui.DynamicItem[ViewButton],
    template=r"imagine:erase:(?P<user>[0-9]{1,20}):(?P<answer>yes|no)",
):
    """ "Erase everything" or "Keep it" under the ephemeral /forget-me question."""

    def __init__(self, user_id: int, answer: str) -> None:
        yes = answer == "yes"
        super().__init__(
            discord.ui.Button(
                label="Erase everything" if yes else "Keep it",
                style=discord.ButtonStyle.danger if yes else discord.ButtonStyle.secondary,
                custom_id=f"imagine:erase:{user_id}:{answer}",
            )
        )
        self.user_id = user_id
        self.answer = answer

    @classmethod
    async def from_custom_id(
        cls,
        interaction: Interaction,
        item: discord.ui.Item[discord.ui.View],
        match: re.Match[str],
    ) -> EraseButton:
        return cls(int(match["user"]), match["answer"])

    async def check(self, interaction: Interaction) -> None:
        if interaction.user.id != self.user_id:
            raise errors.UserError("Only the member who asked can answer this.")

    async def run(self, interaction: Interaction) -> None:
        if self.answer != "yes":
            await interaction.response.edit_message(
                content=render.erase_kept_text(), view=None, allowed_mentions=errors.NO_MENTIONS
            )
            return
        await interaction.response.defer()  # many files may go: answer Discord first
        erased = await imagine_client(interaction.client).images.erase_user(self.user_id)
        logger.info("user %s erased their images and history", self.user_id)
        await interaction.edit_original_response(
            content=render.erased_text(erased.generations, erased.images, erased.kept_active),
            view=None,
            allowed_mentions=errors.NO_MENTIONS,
        )


def erase_view(user_id: int) -> discord.ui.View:
    """The two answers to the /forget-me question."""
    view = discord.ui.View(timeout=None)
    view.add_item(EraseButton(user_id, "yes"))
    view.add_item(EraseButton(user_id, "no"))
    return view
