"""What every restart-proof button shares: the refusal-answering ``interaction_check``, the
job-key pattern of custom ids, and the lookups a check needs."""

from __future__ import annotations

import logging
import re
from typing import ClassVar, Self

import discord

import db
from bot import errors
from bot.client import imagine_client
from bot.interaction import Interaction, ViewButton

logger = logging.getLogger(__name__)

KEY = r"(?P<key>[0-9]{1,20}(?::[0-9]{1,2})?)"


NOT_HERE_TEXT = "This button belongs to another image; use the buttons under that image."


async def job_row(interaction: Interaction, key: str) -> db.Generation:
    """The job a button or form belongs to, or the answer that it is gone."""
    row = await db.get_generation(imagine_client(interaction.client).db, key)
    if row is None:
        raise errors.UserError("I can't find that image any more.")
    return row


async def own_job_row(interaction: Interaction, key: str) -> db.Generation:
    """The job of a button or form pressed on the job's own message, in its own server.

    A custom id carries the job's key and nothing vouches for it: a press on any other
    message, or in another server, is refused before the action runs. The job's message is
    where its row says (the status message, or the reply that carried the image after the
    interaction's token died), so buttons on a late-delivered image work like any others.
    """
    row = await job_row(interaction, key)
    message = interaction.message
    elsewhere = row.guild_id != interaction.guild_id or (
        row.message_id is not None and (message is None or message.id != row.message_id)
    )
    if elsewhere:
        logger.warning(
            "a press for job %s came from another place (guild %s, message %s); refused",
            key,
            interaction.guild_id,
            message.id if message is not None else None,
        )
        raise errors.UserError(NOT_HERE_TEXT)
    return row


def has_permission(interaction: Interaction, permission: str) -> bool:
    """A server permission of the member who clicked (never in DMs)."""
    if interaction.guild_id is None:
        return False
    return bool(getattr(interaction.permissions, permission, False))


class Guarded:
    """``interaction_check`` that answers a refusal itself.

    discord.py drops a click silently when ``interaction_check`` says no (or raises), so the
    refusal is sent here: the member reads why, and the button's action never runs.
    """

    async def interaction_check(self, interaction: Interaction) -> bool:
        try:
            await self.check(interaction)
        except Exception as exc:
            await errors.handle(interaction, exc)
            return False
        return True

    async def check(self, interaction: Interaction) -> None:
        """Raise a ``UserError`` when this member may not press this button."""

    async def callback(self, interaction: Interaction) -> None:
        try:
            async with errors.replying(interaction):
                await self.run(interaction)
        except Exception as exc:
            await errors.handle(interaction, exc)

    async def run(self, interaction: Interaction) -> None:
        raise NotImplementedError


class JobButton(Guarded, discord.ui.DynamicItem[ViewButton], template=r"imagine:(?!)"):
    """The buttons under a job's message, restart-proof: a subclass names its ``action`` and
    gets the custom id ``imagine:<action>:<job key>`` and the DynamicItem template that parses
    it back, so the id format is written once. (This base's own template matches nothing.)

    ``moderator_permission``: besides the member who asked for the image, who may press it
    (None: everyone); ``denied`` is what anyone else reads.
    """

    action: ClassVar[str]
    label: ClassVar[str]
    emoji: ClassVar[str | None] = None
    button_style: ClassVar[discord.ButtonStyle] = discord.ButtonStyle.secondary
    moderator_permission: ClassVar[str | None] = None
    denied: ClassVar[str] = ""
    button_row: ClassVar[int | None] = None  # its row under the image (None: the next free)
    # The engine task its action runs, where it is not the usual one: left out of a result's
    # buttons while nothing runs it (``views.results``).
    needs_task: ClassVar[str | None] = None

    def __init_subclass__(cls, *, template: str | re.Pattern[str] | None = None) -> None:
        if template is None:
            if "action" not in cls.__dict__:
                raise TypeError(f"{cls.__name__} names no action (its custom id)")
            template = rf"imagine:{cls.action}:{KEY}"
        super().__init_subclass__(template=template)

    def __init__(self, job_key: str) -> None:
        button: ViewButton = discord.ui.Button(
            label=self.label,
            emoji=self.emoji,
            style=self.button_style,
            custom_id=f"imagine:{self.action}:{job_key}",
            row=self.button_row,
        )
        super().__init__(button)
        self.job_key = job_key

    @classmethod
    async def from_custom_id(
        cls,
        interaction: Interaction,
        item: discord.ui.Item[discord.ui.View],
        match: re.Match[str],
    ) -> Self:
        return cls(match["key"])

    async def check(self, interaction: Interaction) -> None:
        row = await own_job_row(interaction, self.job_key)
        if self.moderator_permission is None:
            return
        if interaction.user.id != row.user_id and not has_permission(
            interaction, self.moderator_permission
        ):
            raise errors.UserError(self.denied)
