"""Buttons that keep working after a restart.

Every button is a ``discord.ui.DynamicItem`` whose ``custom_id`` carries the action and the job
key (``imagine:reroll:<job_key>``) or the history page it shows. Nothing lives in memory: the
handler loads what it needs from the database, so a restarted bot answers clicks on messages
it sent before the restart. ``setup_hook`` registers these classes with ``add_dynamic_items``.

The custom ids are a promise to every message already posted: change a template and the
buttons in every server stop working. Who may press a button is checked here, in each item's
``interaction_check``, before its action runs.
"""

from __future__ import annotations

import logging
import math
import re
from typing import TYPE_CHECKING, Any, ClassVar

import discord

import db
from bot import errors, render
from bot.web.answer import GalleryButton

if TYPE_CHECKING:
    from bot.app import ImagineBot

logger = logging.getLogger(__name__)

_KEY = r"(?P<key>[0-9]{1,20}(?::[0-9]{1,2})?)"


async def job_row(interaction: discord.Interaction[ImagineBot], key: str) -> db.Generation:
    """The job a button belongs to, or the answer that it is gone."""
    row = await db.get_generation(interaction.client.db, key)
    if row is None:
        raise errors.UserError("I can't find that image any more.")
    return row


def has_permission(interaction: discord.Interaction[Any], permission: str) -> bool:
    """A server permission of the member who clicked (never in DMs)."""
    if interaction.guild_id is None:
        return False
    return bool(getattr(interaction.permissions, permission, False))


class _Guarded:
    """``interaction_check`` that answers a refusal itself.

    discord.py drops a click silently when ``interaction_check`` says no (or raises), so the
    refusal is sent here: the member reads why, and the button's action never runs.
    """

    async def interaction_check(self, interaction: discord.Interaction[ImagineBot]) -> bool:
        try:
            await self.check(interaction)
        except Exception as exc:
            await errors.handle(interaction, exc)
            return False
        return True

    async def check(self, interaction: discord.Interaction[ImagineBot]) -> None:
        """Raise a ``UserError`` when this member may not press this button."""

    async def callback(self, interaction: discord.Interaction[ImagineBot]) -> None:
        try:
            async with errors.replying(interaction):
                await self.run(interaction)
        except Exception as exc:
            await errors.handle(interaction, exc)

    async def run(self, interaction: discord.Interaction[ImagineBot]) -> None:
        raise NotImplementedError


class _JobButton(_Guarded):
    """Shared behaviour of the job buttons; subclasses add the DynamicItem template.

    ``moderator_permission``: besides the member who asked for the image, who may press it
    (None: everyone); ``denied`` is what anyone else reads.
    """

    action: ClassVar[str]
    label: ClassVar[str]
    emoji: ClassVar[str | None] = None
    button_style: ClassVar[discord.ButtonStyle] = discord.ButtonStyle.secondary
    moderator_permission: ClassVar[str | None] = None
    denied: ClassVar[str] = ""

    def __init__(self, job_key: str) -> None:
        button: discord.ui.Button[Any] = discord.ui.Button(
            label=self.label,
            emoji=self.emoji,
            style=self.button_style,
            custom_id=f"imagine:{self.action}:{job_key}",
        )
        super().__init__(button)  # type: ignore[call-arg]
        self.job_key = job_key

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Button[Any],
        match: re.Match[str],
    ) -> Any:
        return cls(match["key"])

    async def check(self, interaction: discord.Interaction[ImagineBot]) -> None:
        if self.moderator_permission is None:
            return
        row = await job_row(interaction, self.job_key)
        if interaction.user.id != row.user_id and not has_permission(
            interaction, self.moderator_permission
        ):
            raise errors.UserError(self.denied)


class RerollButton(
    _JobButton, discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"imagine:reroll:{_KEY}"
):
    action = "reroll"
    label = "Reroll"
    emoji = "🎲"
    button_style = discord.ButtonStyle.primary

    async def run(self, interaction: discord.Interaction[ImagineBot]) -> None:
        await interaction.client.jobs.reroll(interaction, self.job_key)


class VariationsButton(
    _JobButton, discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"imagine:vary:{_KEY}"
):
    action = "vary"
    label = "Variations"
    emoji = "🔀"

    async def run(self, interaction: discord.Interaction[ImagineBot]) -> None:
        await interaction.client.jobs.variations(interaction, self.job_key)


class DetailsButton(
    _JobButton, discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"imagine:details:{_KEY}"
):
    action = "details"
    label = "Details"
    emoji = "ℹ️"

    async def run(self, interaction: discord.Interaction[ImagineBot]) -> None:
        row = await job_row(interaction, self.job_key)
        await errors.send_ephemeral(interaction, embed=render.details_embed(row))


class DeleteButton(
    _JobButton, discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"imagine:delete:{_KEY}"
):
    action = "delete"
    label = "Delete"
    emoji = "🗑️"
    button_style = discord.ButtonStyle.danger
    moderator_permission = "manage_messages"
    denied = "Only the person who asked for this image or a moderator can delete it."

    async def run(self, interaction: discord.Interaction[ImagineBot]) -> None:
        await interaction.response.defer()
        try:
            await interaction.delete_original_response()
        except discord.HTTPException:
            if interaction.message is None:
                raise
            await interaction.message.delete()
        await db.set_message(interaction.client.db, self.job_key, message_id=None)
        logger.info("job %s: image deleted by user %s", self.job_key, interaction.user.id)


class CancelButton(
    _JobButton, discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"imagine:cancel:{_KEY}"
):
    action = "cancel"
    label = "Cancel"
    emoji = "✖️"
    button_style = discord.ButtonStyle.danger
    moderator_permission = "manage_guild"
    denied = "Only the person who asked for this image or a server admin can cancel it."

    async def run(self, interaction: discord.Interaction[ImagineBot]) -> None:
        await interaction.client.jobs.cancel(interaction, self.job_key)


def status_view(job_key: str) -> discord.ui.View:
    """The buttons under a status message while its job waits or runs."""
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_key))
    return view


def result_view(job_key: str) -> discord.ui.View:
    """The buttons under a finished image."""
    view = discord.ui.View(timeout=None)
    for cls in (RerollButton, VariationsButton, DetailsButton, DeleteButton):
        view.add_item(cls(job_key))
    return view


# --------------------------------------------------------------------------- history


class HistoryButton(
    _Guarded,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"imagine:hist:(?P<viewer>[0-9]{1,20}):(?P<target>[0-9]{1,20}):(?P<page>[0-9]{1,6}):(?P<dir>[pn])",
):
    """Previous/next page of a /history listing. Only the person who opened it may page."""

    def __init__(
        self, viewer_id: int, target_id: int, page: int, direction: str, *, disabled: bool
    ) -> None:
        label = "◀ Newer" if direction == "p" else "Older ▶"
        super().__init__(
            discord.ui.Button(
                label=label,
                style=discord.ButtonStyle.secondary,
                custom_id=f"imagine:hist:{viewer_id}:{target_id}:{page}:{direction}",
                disabled=disabled,
            )
        )
        self.viewer_id = viewer_id
        self.target_id = target_id
        self.page = page

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Button[Any],
        match: re.Match[str],
    ) -> HistoryButton:
        return cls(
            int(match["viewer"]),
            int(match["target"]),
            int(match["page"]),
            match["dir"],
            disabled=False,
        )

    async def check(self, interaction: discord.Interaction[ImagineBot]) -> None:
        if interaction.user.id != self.viewer_id:
            raise errors.UserError("Only the person who opened this list can turn its pages.")
        if self.target_id != self.viewer_id and not can_view_others(interaction):
            raise errors.UserError(
                "You need the **Manage Server** permission to see another member's history."
            )

    async def run(self, interaction: discord.Interaction[ImagineBot]) -> None:
        embed, view = await history_page(
            interaction.client,
            viewer_id=self.viewer_id,
            target_id=self.target_id,
            target_name=await _display_name(interaction, self.target_id),
            guild_id=interaction.guild_id,
            page=self.page,
        )
        await interaction.response.edit_message(
            embed=embed, view=view, allowed_mentions=errors.NO_MENTIONS
        )


def can_view_others(interaction: discord.Interaction[Any]) -> bool:
    return has_permission(interaction, "manage_guild")


async def _display_name(interaction: discord.Interaction[Any], user_id: int) -> str:
    if user_id == interaction.user.id:
        return interaction.user.display_name
    guild = interaction.guild
    member = guild.get_member(user_id) if guild is not None else None
    if member is not None:
        return member.display_name
    user = interaction.client.get_user(user_id)
    return user.display_name if user is not None else f"user {user_id}"


async def history_page(
    bot: ImagineBot,
    *,
    viewer_id: int,
    target_id: int,
    target_name: str,
    guild_id: int | None,
    page: int,
) -> tuple[discord.Embed, discord.ui.View]:
    """One page of a member's generations here, newest first, with paging buttons."""
    per_page = bot.settings.history_page_size
    page = max(1, page)
    rows, total = await db.user_history(
        bot.db, user_id=target_id, guild_id=guild_id, page=page, per_page=per_page
    )
    pages = max(1, math.ceil(total / per_page))
    if page > pages:
        page = pages
        rows, total = await db.user_history(
            bot.db, user_id=target_id, guild_id=guild_id, page=page, per_page=per_page
        )
    embed = render.history_embed(rows, target_name=target_name, page=page, pages=pages, total=total)
    view = discord.ui.View(timeout=None)
    view.add_item(HistoryButton(viewer_id, target_id, page - 1, "p", disabled=page <= 1))
    view.add_item(HistoryButton(viewer_id, target_id, page + 1, "n", disabled=page >= pages))
    if bot.settings.health_port:  # the web gallery lives on that server
        view.add_item(GalleryButton())
    return embed, view


DYNAMIC_ITEMS: tuple[type[discord.ui.DynamicItem[Any]], ...] = (
    RerollButton,
    VariationsButton,
    DetailsButton,
    DeleteButton,
    CancelButton,
    HistoryButton,
)
