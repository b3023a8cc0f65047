"""What the gallery's pages read, passed in (``GalleryDeps``), and the keys the application
holds it under; the routes (``bot.gallery.routes``) and the application that mounts them
(``bot.gallery.app``) both read it from here."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

import db
from bot.gallery.admins import AdminConfirmations
from bot.gallery.auth import LinkSigner
from bot.gallery.cards import CardCache
from bot.gallery.files import ImageFiles
from bot.gallery.pages import NameLookup

STATIC_DIR = Path(__file__).resolve().parent / "static"
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
PAGE_SIZE = 50


def _no_names(guild_id: int | None, user_id: int) -> str | None:
    return None


async def _trust_the_link(guild_id: int, user_id: int) -> bool | None:
    return True


@dataclasses.dataclass
class GalleryDeps:
    """What the pages read. Getters, because the bot opens its database and store after it
    builds the web server; ``files`` returning None means no image store is configured."""

    database: Callable[[], db.Database | None]
    files: Callable[[], ImageFiles | None]
    signer: LinkSigner
    # The Delete button's own path (``ImageKeeper.forget``): a file goes only when no row
    # names it, under the same per-file lock as keeping an image.
    forget: Callable[[str], Awaitable[bool]]
    # Is this member still allowed Manage Server there? An admin link outlives a demotion:
    # its pages ask Discord again now and then, a delete every time (``bot.gallery.admins``).
    admins: AdminConfirmations = dataclasses.field(
        default_factory=lambda: AdminConfirmations(_trust_the_link)
    )
    names: NameLookup = _no_names
    guild_name: Callable[[int], str | None] = lambda guild_id: None
    page_size: int = PAGE_SIZE
    cards: CardCache = dataclasses.field(default_factory=CardCache)


DEPS = web.AppKey("gallery_deps", GalleryDeps)
CSS_VERSION = web.AppKey("gallery_css_version", str)
