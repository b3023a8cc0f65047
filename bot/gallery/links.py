"""Making gallery links from the bot's settings: the signing key, the public base URL, the TTL.

``GalleryLinks`` is the one object both sides share: ``/gallery`` signs a link with it and the
web pages check links with it, so they always agree on the key.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.engine import make_url

from bot.gallery.auth import SECRET_FILE_NAME, LinkSigner, load_or_create_secret
from bot.settings import BotSettings

logger = logging.getLogger(__name__)

MOUNT = "/gallery"


def data_dir(settings: BotSettings) -> Path:
    """Where the bot keeps its state: the SQLite database's folder (``/data`` in Docker),
    else ``./data``; the generated link key lives there, next to the database it protects."""
    try:
        url = make_url(settings.database_url)
    except Exception:  # an unusual URL: fall back below
        url = None
    database = url.database if url is not None and url.get_backend_name() == "sqlite" else None
    if database and database != ":memory:" and not database.startswith("file:"):
        return Path(database).expanduser().resolve().parent
    return Path("data").resolve()


def public_base(settings: BotSettings) -> str:
    """The address people open: ``IMAGINE_PUBLIC_URL`` behind a proxy, else this machine."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    return f"http://127.0.0.1:{settings.health_port}"


class GalleryLinks:
    """Signs and checks gallery links; ``url`` is what ``/gallery`` shows a member."""

    def __init__(self, signer: LinkSigner, *, base_url: str, ttl_s: float) -> None:
        self.signer = signer
        self.base_url = base_url.rstrip("/")
        self.ttl_s = ttl_s

    @classmethod
    def from_settings(cls, settings: BotSettings) -> GalleryLinks:
        if settings.gallery_secret is not None:
            secret = settings.gallery_secret.get_secret_value().encode()
        else:
            secret = load_or_create_secret(data_dir(settings) / SECRET_FILE_NAME)
        return cls(
            LinkSigner(secret), base_url=public_base(settings), ttl_s=settings.gallery_link_ttl_s
        )

    def token(self, *, guild_id: int | None, user_id: int, admin: bool, epoch: int = 0) -> str:
        return self.signer.sign(
            guild_id=guild_id, user_id=user_id, admin=admin, ttl_s=self.ttl_s, epoch=epoch
        )

    def url(self, *, guild_id: int | None, user_id: int, admin: bool, epoch: int = 0) -> str:
        """A fresh link to this member's view of this server (None: of their DMs), of the
        server's current link generation ``epoch`` (``db.gallery.gallery_links_epoch``)."""
        token = self.token(guild_id=guild_id, user_id=user_id, admin=admin, epoch=epoch)
        return f"{self.base_url}{MOUNT}/{token}/"
