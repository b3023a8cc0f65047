"""The web gallery: signed-link pages of a server's images, served by the bot's health server.

``bot.web.app`` builds the aiohttp sub-application, ``bot.web.routes`` holds the pages,
``bot.web.pages`` the visibility rules, ``bot.web.auth`` the signed links and CSRF tokens,
``bot.web.security`` the headers and rate limit, ``bot.web.links`` the links ``/gallery`` hands
out. The queries are in ``db.gallery``; the files come from the image store (``bot.store``).
"""

from bot.web.app import GalleryDeps, build_gallery_app, mount_gallery
from bot.web.auth import BadLink, Grant, LinkSigner
from bot.web.links import MOUNT, GalleryLinks

__all__ = [
    "MOUNT",
    "BadLink",
    "GalleryDeps",
    "GalleryLinks",
    "Grant",
    "LinkSigner",
    "build_gallery_app",
    "mount_gallery",
]
