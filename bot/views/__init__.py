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
from bot.imagine import variations
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
    button_row: ClassVar[int | None] = None  # its row under the image (None: the next free)

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
    button_row = 0

    async def run(self, interaction: discord.Interaction[ImagineBot]) -> None:
        await interaction.client.jobs.reroll(interaction, self.job_key)


class VariationsButton(
    _JobButton, discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"imagine:vary:{_KEY}"
):
    """Images posted before the Vary buttons carry this one (no stored image): two new seeds
    of the same prompt, as it always did. New images get Vary (Subtle/Strong) instead."""

    action = "vary"
    label = "Variations"
    emoji = "🔀"

    async def run(self, interaction: discord.Interaction[ImagineBot]) -> None:
        await interaction.client.jobs.variations(interaction, self.job_key)


class VarySubtleButton(
    _JobButton, discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"imagine:subtle:{_KEY}"
):
    """Image-to-image from the stored image at ``VARY_SUBTLE_STRENGTH``, new seed."""

    action = "subtle"
    label = "Vary (Subtle)"
    emoji = "🪶"
    button_row = 0

    async def run(self, interaction: discord.Interaction[ImagineBot]) -> None:
        await interaction.client.jobs.vary(interaction, self.job_key, strong=False)


class VaryStrongButton(
    _JobButton, discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"imagine:strong:{_KEY}"
):
    """Image-to-image from the stored image at ``VARY_STRONG_STRENGTH``, new seed."""

    action = "strong"
    label = "Vary (Strong)"
    emoji = "🌀"
    button_row = 0

    async def run(self, interaction: discord.Interaction[ImagineBot]) -> None:
        await interaction.client.jobs.vary(interaction, self.job_key, strong=True)


class RemixButton(
    _JobButton, discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"imagine:remix:{_KEY}"
):
    """Opens the Remix form (prompt and negative, pre-filled); its answer is a strong variation
    with the edited text (``handle_remix_form``)."""

    action = "remix"
    label = "Remix"
    emoji = "🎨"
    button_row = 0

    async def run(self, interaction: discord.Interaction[ImagineBot]) -> None:
        prompt, negative = await variations.open_remix(interaction.client, self.job_key)
        await interaction.response.send_modal(remix_form(self.job_key, prompt, negative))


class DetailsButton(
    _JobButton, discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"imagine:details:{_KEY}"
):
    action = "details"
    label = "Details"
    emoji = "ℹ️"
    button_row = 1

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
    button_row = 1

    async def run(self, interaction: discord.Interaction[ImagineBot]) -> None:
        await interaction.response.defer()
        try:
            await interaction.delete_original_response()
        except discord.HTTPException:
            if interaction.message is None:
                raise
            await interaction.message.delete()
        await db.set_message(interaction.client.db, self.job_key, message_id=None)
        # The stored copy goes too (the file itself once no other job shares its bytes).
        await interaction.client.images.forget(self.job_key)
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


RESULT_BUTTONS: tuple[type[_JobButton], ...] = (
    RerollButton,
    VarySubtleButton,
    VaryStrongButton,
    RemixButton,
    DetailsButton,
    DeleteButton,
)


def result_view(job_key: str) -> discord.ui.View:
    """The buttons under a finished image: making more on the first row, the rest below."""
    view = discord.ui.View(timeout=None)
    for cls in RESULT_BUTTONS:
        view.add_item(cls(job_key))  # type: ignore[arg-type]
    return view


# --------------------------------------------------------------------------- the Remix form

REMIX_FORM = re.compile(rf"imagine:remixed:{_KEY}")
REMIX_PROMPT = "prompt"
REMIX_NEGATIVE = "negative"
# Discord's own limit on a text input; the prompt rules themselves are policy's (the same
# answers as /imagine), so the form does not cut anything short on its own.
TEXT_INPUT_MAX = 4000


def remix_form(job_key: str, prompt: str, negative: str | None) -> discord.ui.Modal:
    """The Remix form, pre-filled with the image's prompt and negative prompt.

    It is answered by ``handle_remix_form`` from its custom id alone (not by an object kept in
    memory), so a form opened before a restart still works when it is sent after it.
    """
    modal = discord.ui.Modal(title="Remix this image", custom_id=f"imagine:remixed:{job_key}")
    modal.add_item(
        discord.ui.TextInput(
            label="Prompt",
            custom_id=REMIX_PROMPT,
            style=discord.TextStyle.paragraph,
            default=prompt[:TEXT_INPUT_MAX],
            required=False,
            max_length=TEXT_INPUT_MAX,
        )
    )
    modal.add_item(
        discord.ui.TextInput(
            label="Negative prompt (what to keep out)",
            custom_id=REMIX_NEGATIVE,
            style=discord.TextStyle.paragraph,
            default=(negative or "")[:TEXT_INPUT_MAX] or None,
            required=False,
            max_length=TEXT_INPUT_MAX,
        )
    )
    modal.stop()  # nothing kept in memory: see the docstring
    return modal


def form_values(data: Any) -> dict[str, str]:
    """The text inputs of a submitted form by custom id (any layout: rows or labels)."""
    values: dict[str, str] = {}

    def walk(items: Any) -> None:
        if not isinstance(items, list):
            return
        for item in items:
            if not isinstance(item, dict):
                continue
            custom_id, value = item.get("custom_id"), item.get("value")
            if isinstance(custom_id, str) and isinstance(value, str):
                values[custom_id] = value
            walk(item.get("components"))
            if isinstance(item.get("component"), dict):
                walk([item["component"]])

    walk((data or {}).get("components") if isinstance(data, dict) else None)
    return values


async def handle_remix_form(interaction: discord.Interaction[ImagineBot]) -> bool:
    """Answer a submitted Remix form; False when the interaction is not one."""
    if interaction.type != discord.InteractionType.modal_submit:
        return False
    data = interaction.data if isinstance(interaction.data, dict) else {}
    custom_id = data.get("custom_id")
    match = REMIX_FORM.fullmatch(custom_id) if isinstance(custom_id, str) else None
    if match is None:
        return False
    values = form_values(data)
    try:
        async with errors.replying(interaction):
            await interaction.client.jobs.remix(
                interaction,
                match["key"],
                prompt=values.get(REMIX_PROMPT, ""),
                negative=values.get(REMIX_NEGATIVE) or None,
            )
    except Exception as exc:
        await errors.handle(interaction, exc)
    return True


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
    VarySubtleButton,
    VaryStrongButton,
    RemixButton,
    DetailsButton,
    DeleteButton,
    CancelButton,
    HistoryButton,
)
