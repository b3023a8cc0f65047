"""/history pages: the paging buttons and the page itself."""

from __future__ import annotations

import math
import re

import discord

import db
from bot import errors, render
from bot.client import ImagineClient, imagine_client
from bot.gallery.answer import GalleryButton
from bot.interaction import Interaction, ViewButton
from bot.views.base import Guarded, has_permission


class HistoryButton(
    Guarded,
    discord.ui.DynamicItem[ViewButton],
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
        interaction: Interaction,
        item: discord.ui.Item[discord.ui.View],
        match: re.Match[str],
    ) -> HistoryButton:
        return cls(
            int(match["viewer"]),
            int(match["target"]),
            int(match["page"]),
            match["dir"],
            disabled=False,
        )

    async def check(self, interaction: Interaction) -> None:
        if interaction.user.id != self.viewer_id:
            raise errors.UserError("Only the person who opened this list can turn its pages.")
        if self.target_id != self.viewer_id and not can_view_others(interaction):
            raise errors.UserError(
                "You need the **Manage Server** permission to see another member's history."
            )

    async def run(self, interaction: Interaction) -> None:
        embed, view = await history_page(
            imagine_client(interaction.client),
            viewer_id=self.viewer_id,
            target_id=self.target_id,
            target_name=await _display_name(interaction, self.target_id),
            guild_id=interaction.guild_id,
            page=self.page,
        )
        await interaction.response.edit_message(
            embed=embed, view=view, allowed_mentions=errors.NO_MENTIONS
        )


def can_view_others(interaction: Interaction) -> bool:
    return has_permission(interaction, "manage_guild")


async def _display_name(interaction: Interaction, user_id: int) -> str:
    if user_id == interaction.user.id:
        return interaction.user.display_name
    guild = interaction.guild
    member = guild.get_member(user_id) if guild is not None else None
    if member is not None:
        return member.display_name
    user = interaction.client.get_user(user_id)
    return user.display_name if user is not None else f"user {user_id}"


async def history_page(
    bot: ImagineClient,
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
