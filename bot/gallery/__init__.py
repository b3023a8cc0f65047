"""The web gallery: signed-link pages of a server's images, served by the bot's health server,
and /gallery, the command that hands out their links (one feature, one folder).

``app`` builds the aiohttp sub-application, ``routes`` holds the pages, ``pages`` the visibility
rules, ``auth`` the signed links and CSRF tokens, ``security`` the headers and rate limit,
``links`` the links ``/gallery`` hands out, ``answer`` the answer /gallery and the Gallery button
give, and ``cog`` the command. The queries are in ``db.gallery``; the files come from the image
store (``bot.store``).
"""

from discord.ext import commands

from bot.gallery.app import build_gallery_app, mount_gallery
from bot.gallery.auth import BadLink, Grant, LinkSigner
from bot.gallery.deps import GalleryDeps
from bot.gallery.links import MOUNT, GalleryLinks

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


async def setup(bot: commands.Bot) -> None:
    """The extension: /gallery and its restart-proof Gallery button."""
    from bot.gallery.cog import setup as setup_cog

    await setup_cog(bot)
