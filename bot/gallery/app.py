"""The gallery as an aiohttp sub-application, mounted under ``/gallery`` on the bot's health
server (one port, one process; see README "Web gallery" for Docker and a TLS reverse proxy).

It needs the database, the image store and the link signer, all passed in as ``GalleryDeps``,
so tests (and the benchmark) run it without a Discord connection.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

import db
from bot.gallery.admins import AdminConfirmations
from bot.gallery.auth import LinkSigner
from bot.gallery.cards import CardCache
from bot.gallery.files import ImageFiles
from bot.gallery.links import MOUNT
from bot.gallery.pages import NameLookup
from bot.gallery.security import LOOPBACK, Networks, TokenBucket, security_middleware

logger = logging.getLogger(__name__)

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


def build_gallery_app(
    deps: GalleryDeps,
    *,
    limiter: TokenBucket | None = None,
    trusted_proxies: Networks = LOOPBACK,
) -> web.Application:
    """The gallery's routes, templates and security middleware, ready to mount."""
    from bot.gallery import routes  # the handlers need DEPS from this module

    app = web.Application(
        middlewares=[security_middleware(limiter or TokenBucket(), trusted_proxies)]
    )
    app[DEPS] = deps
    css = (STATIC_DIR / "gallery.css").read_bytes()
    app[CSS_VERSION] = hashlib.sha256(css).hexdigest()[:12]
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        # Every value is escaped unless a template says otherwise (none does).
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        default_helpers=False,
    )
    routes.add_routes(app)
    return app


def mount_gallery(parent: web.Application, deps: GalleryDeps, **kwargs: Any) -> web.Application:
    """Add the gallery under ``/gallery`` to an existing application (the health server's)."""
    app = build_gallery_app(deps, **kwargs)
    parent.add_subapp(MOUNT, app)
    return app
