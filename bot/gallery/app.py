"""The gallery as an aiohttp sub-application, mounted under ``/gallery`` on the bot's health
server (one port, one process; see README "Web gallery" for Docker and a TLS reverse proxy).

It needs the database, the image store and the link signer, all passed in as ``GalleryDeps``
(``bot.gallery.deps``), so tests (and the benchmark) run it without a Discord connection.
"""

from __future__ import annotations

import hashlib
import logging

import aiohttp_jinja2
import jinja2
from aiohttp import web

from bot.gallery import routes
from bot.gallery.deps import CSS_VERSION, DEPS, STATIC_DIR, TEMPLATES_DIR, GalleryDeps
from bot.gallery.links import MOUNT
from bot.gallery.security import LOOPBACK, Networks, TokenBucket, security_middleware

logger = logging.getLogger(__name__)


def build_gallery_app(
    deps: GalleryDeps,
    *,
    limiter: TokenBucket | None = None,
    trusted_proxies: Networks = LOOPBACK,
) -> web.Application:
    """The gallery's routes, templates and security middleware, ready to mount."""
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


def mount_gallery(
    parent: web.Application,
    deps: GalleryDeps,
    *,
    limiter: TokenBucket | None = None,
    trusted_proxies: Networks = LOOPBACK,
) -> web.Application:
    """Add the gallery under ``/gallery`` to an existing application (the health server's)."""
    app = build_gallery_app(deps, limiter=limiter, trusted_proxies=trusted_proxies)
    parent.add_subapp(MOUNT, app)
    return app
