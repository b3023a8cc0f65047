"""The gallery inside the running bot: its links, its database and store, its member names.

The bot is the one process that holds the database and the image store, with the in-process
engine and with Redis workers alike, so the gallery needs nothing of the image backend.
"""

from __future__ import annotations

import asyncio
import functools
import logging

import discord

from bot.client import ImagineClient
from bot.gallery.admins import AdminConfirmations, Standing
from bot.gallery.deps import GalleryDeps
from bot.gallery.files import ImageFiles
from bot.gallery.links import GalleryLinks

logger = logging.getLogger(__name__)

_ATTRIBUTE = "gallery_links"
_ADMINS = "gallery_admins"
ADMIN_CHECK_TIMEOUT_S = 5.0


def links_for(bot: ImagineClient) -> GalleryLinks:
    """The bot's one ``GalleryLinks`` (made on first use: reading or creating the key touches
    the data folder, which a bot with the web server off never needs)."""
    links: GalleryLinks | None = getattr(bot, _ATTRIBUTE, None)
    if links is None:
        links = GalleryLinks.from_settings(bot.settings)
        setattr(bot, _ATTRIBUTE, links)
    return links


def admins_for(bot: ImagineClient) -> AdminConfirmations:
    """The bot's one ``AdminConfirmations``: the gallery's pages and ``/gallery`` share what
    Discord said about each member (still in the server? Manage Server?)."""
    admins: AdminConfirmations | None = getattr(bot, _ADMINS, None)
    if admins is None:
        admins = AdminConfirmations(functools.partial(member_standing, bot))
        setattr(bot, _ADMINS, admins)
    return admins


def _store(bot: ImagineClient) -> ImageFiles | None:
    """The bot's image store (``bot.store``, a ``bot.store.ImageStore``), if it keeps images."""
    return bot.store


def deps_for(bot: ImagineClient) -> GalleryDeps:
    """What the gallery pages read, from the bot: names come from Discord's cache only; the
    one Discord request a page view can make is a link's confirmation, cached per member
    (``bot.gallery.admins``)."""

    def names(guild_id: int | None, user_id: int) -> str | None:
        guild = bot.get_guild(guild_id) if guild_id is not None else None
        member = guild.get_member(user_id) if guild is not None else None
        if member is not None:
            return member.display_name
        user = bot.get_user(user_id)
        return user.display_name if user is not None else None

    def guild_name(guild_id: int) -> str | None:
        guild = bot.get_guild(guild_id)
        return guild.name if guild is not None else None

    return GalleryDeps(
        database=lambda: bot.db,
        files=lambda: _store(bot),
        signer=links_for(bot).signer,
        forget=bot.images.forget,
        admins=admins_for(bot),
        names=names,
        guild_name=guild_name,
    )


async def member_standing(bot: ImagineClient, guild_id: int, user_id: int) -> Standing | None:
    """Where the member stands in that server now, asked of Discord (the bot has no members
    intent, so its cache may hold an old copy of their roles, or none): an admin (Manage
    Server), a member, or gone (left, kicked, banned; or the bot left the server). None when
    that cannot be told (not connected yet, Discord slow or failing: a link's page or delete
    waits at most ``ADMIN_CHECK_TIMEOUT_S``)."""
    if not bot.is_ready():
        return None
    guild = bot.get_guild(guild_id)
    if guild is None:
        return Standing.GONE
    try:
        async with asyncio.timeout(ADMIN_CHECK_TIMEOUT_S):
            member = await guild.fetch_member(user_id)
    except discord.NotFound:
        return Standing.GONE
    except Exception as exc:  # HTTP errors, dropped connections, the timeout
        logger.warning("gallery: could not check member %s of guild %s: %r",
                       user_id, guild_id, exc)  # fmt: skip
        return None
    return Standing.ADMIN if member.guild_permissions.manage_guild else Standing.MEMBER
