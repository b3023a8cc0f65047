"""What every restart-proof button shares: the refusal-answering ``interaction_check``, the
job-key pattern of custom ids, and the lookups a check needs."""

from __future__ import annotations

import re
from typing import Any, ClassVar

import discord

import db
from bot import errors
from bot.client import imagine_client
from bot.interaction import Interaction

KEY = r"(?P<key>[0-9]{1,20}(?::[0-9]{1,2})?)"


async def job_row(interaction: Interaction, key: str) -> db.Generation:
    """The job a button belongs to, or the answer that it is gone."""
    row = await db.get_generation(imagine_client(interaction.client).db, key)
    if row is None:
        raise errors.UserError("I can't find that image any more.")
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


class JobButton(Guarded, discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"imagine:(?!)"):
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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        if "action" in cls.__dict__ and "template" not in kwargs:
            kwargs["template"] = rf"imagine:{cls.action}:{KEY}"
        super().__init_subclass__(**kwargs)

    def __init__(self, job_key: str) -> None:
        button: discord.ui.Button[Any] = discord.ui.Button(
            label=self.label,
            emoji=self.emoji,
            style=self.button_style,
            custom_id=f"imagine:{self.action}:{job_key}",
            row=self.button_row,
        )
        super().__init__(button)  # type: ignore[call-arg]
        self.job_key = job_key

    @classmethod
    async def from_custom_id(
        cls,
        interaction: Interaction,
        item: discord.ui.Button[Any],
        match: re.Match[str],
    ) -> Any:
        return cls(match["key"])

    async def check(self, interaction: Interaction) -> None:
        if self.moderator_permission is None:
            return
        row = await job_row(interaction, self.job_key)
        if interaction.user.id != row.user_id and not has_permission(
            interaction, self.moderator_permission
        ):
            raise errors.UserError(self.denied)
