"""Gallery links: no accounts, only signed, expiring grants that /gallery hands out.

A link carries a *grant* (which server, which member, whether that member could manage the
server when the link was made, when it expires, and the server's link generation, which an
admin moves on to end every link given out so far), signed with a secret key so that nobody can
widen it: change one character and the signature fails. The gallery pages read the grant from
the link on every request; nothing is kept in memory or in cookies.

The same key derives each link's CSRF token (an HMAC of the link), which every form that changes
something carries in a hidden field: a page on another site cannot read it, so it cannot make a
member's browser delete an image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from itsdangerous import BadSignature, URLSafeSerializer

logger = logging.getLogger(__name__)

# Separates gallery signatures from anything else the same key might ever sign.
LINK_SALT = "imagine.gallery.link.v1"
CSRF_CONTEXT = b"imagine.gallery.csrf.v1\x00"
SECRET_FILE_NAME = "gallery_secret"
# Direct messages have no guild id; grants use 0 for them (no Discord snowflake is 0).
DM_SCOPE = 0
# A link generation is a SQLite integer (signed 64-bit).
MAX_EPOCH = 2**62


class BadLink(Exception):
    """A link that is tampered with, malformed or expired; the page answers a plain 403."""


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """What one link allows: a member's view of one server (or of their DMs) until ``expires``.

    ``admin`` is the member's Manage Server permission at the moment the link was made: admins
    see the whole gallery of that server and may delete any image in it. ``epoch`` is the
    server's link generation then (``db.gallery.gallery_links_epoch``; 0 for links made before
    generations existed): the link works only while it is still the server's.
    """

    guild_id: int | None
    user_id: int
    admin: bool
    expires: int
    epoch: int = 0

    @property
    def scope(self) -> int:
        return DM_SCOPE if self.guild_id is None else self.guild_id


class LinkSigner:
    """Makes and checks gallery grants with one secret key.

    ``clock`` returns Unix seconds; tests pass their own to make links that are already expired.
    """

    def __init__(self, secret: bytes, *, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < 16:
            raise ValueError("the gallery secret must be at least 16 bytes")
        self._secret = secret
        self._serializer = URLSafeSerializer(secret, salt=LINK_SALT)
        self._clock = clock

    def sign(
        self, *, guild_id: int | None, user_id: int, admin: bool, ttl_s: float, epoch: int = 0
    ) -> str:
        """A link token for this member in this server (None: their direct messages), of the
        server's link generation ``epoch``."""
        expires = int(self._clock() + ttl_s)
        scope = DM_SCOPE if guild_id is None else guild_id
        grant = {"g": str(scope), "u": str(user_id), "a": int(admin), "e": expires}
        if epoch:
            grant["v"] = int(epoch)
        return str(self._serializer.dumps(grant))

    def load(self, token: str) -> Grant:
        """The grant a token carries; ``BadLink`` if it is forged, malformed or expired."""
        if not token or len(token) > 512:
            raise BadLink("malformed link")
        try:
            data = self._serializer.loads(token)
        except BadSignature as exc:
            raise BadLink("bad signature") from exc
        try:
            scope = int(data["g"])
            user_id = int(data["u"])
            admin = bool(int(data["a"]))
            expires = int(data["e"])
            epoch = int(data.get("v", 0))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadLink("malformed grant") from exc
        if not 0 <= epoch <= MAX_EPOCH:
            raise BadLink("malformed grant")
        if expires <= self._clock():
            raise BadLink("expired")
        guild_id = None if scope == DM_SCOPE else scope
        return Grant(
            guild_id=guild_id,
            user_id=user_id,
            admin=admin and guild_id is not None,
            expires=expires,
            epoch=epoch,
        )

    def csrf_token(self, token: str) -> str:
        """The hidden-field value that proves a form was served by this link's own page."""
        return hmac.new(self._secret, CSRF_CONTEXT + token.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, token: str, value: str | None) -> bool:
        """Constant-time check of a submitted CSRF value against the link's own."""
        if not value or not value.isascii():  # compare_digest raises for non-ASCII text
            return False
        return hmac.compare_digest(self.csrf_token(token), value)


MIN_SECRET_BYTES = 32


class SecretFileError(RuntimeError):
    """The key file is there but unusable: the bot refuses to start rather than make a new key,
    which would end every gallery link given out so far. The message says what to do."""


def load_or_create_secret(path: Path) -> bytes:
    """The key kept in ``path``, made on first use, so that links survive a restart.

    The file is created readable by its owner only; a key that cannot be written is still used
    for this run (links then last until the next restart) and the reason is logged. A file that
    exists but cannot be read, or holds too short a key, raises ``SecretFileError``.
    """
    try:
        existing = path.read_bytes().strip()
    except FileNotFoundError:
        return _create_secret(path)
    except OSError as exc:
        raise SecretFileError(
            f"cannot read the gallery link key at {path} "
            f"({exc.strerror or exc.__class__.__name__}): let this user read it, or set "
            "IMAGINE_GALLERY_SECRET. No new key was made: one would end every gallery link "
            "given out so far."
        ) from None
    if len(existing) < MIN_SECRET_BYTES:
        raise SecretFileError(
            f"the gallery link key at {path} is too short ({len(existing)} bytes; at least "
            f"{MIN_SECRET_BYTES}): the bot did not write it, or it is damaged. Restore it, "
            "delete it to make a new one (every gallery link given out so far stops working), "
            "or set IMAGINE_GALLERY_SECRET."
        )
    return existing


def _create_secret(path: Path) -> bytes:
    secret = secrets.token_urlsafe(48).encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secret)
        os.replace(tmp, path)
        logger.info("made a new gallery link key at %s", path)
    except OSError as exc:
        logger.warning(
            "cannot keep the gallery secret at %s (%s): links made now stop working at the "
            "next restart; set IMAGINE_GALLERY_SECRET",
            path,
            exc,
        )
    return secret
