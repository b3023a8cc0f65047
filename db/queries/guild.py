"""A guild's settings: daily quota, queued-jobs cap, allowed channels, exempt roles and
blocked words. Rows appear on the first admin change; a guild without one follows the bot's
defaults, and direct messages always do."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import re
import unicodedata
from collections.abc import Iterable, Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from db.database import Database
from db.models import GuildSettings
from db.queries.common import utcnow

MAX_BLOCKED_WORD = 100


# Letters of other alphabets that look like Latin ones, folded to them before matching, so a
# blocked word written with a Cyrillic "а" or a Greek "ο" is still the word. Upper and lower
# case are listed separately because they resemble different Latin letters (Cyrillic "В" is a
# "B", its lower case "в" is not a "b"). NFKC already folds fullwidth and mathematical letters.
_CONFUSABLES = str.maketrans(
    # Cyrillic
    "АаВЕеКкМНһОоРрСсТУуҮүХхЅѕІіЇїЈјӀӏԁԛԜԝ"
    # Greek
    "ΑαΒΕΖΗΙιΚκΜΝνΟοΡρΤΥυΧχϲϹϳ"
    # Latin look-alikes
    "ɡɑıȷʏ",
    "AaBEeKkMHhOoPpCcTYyYyXxSsIiIiJjIldqWwAaBEZHIiKkMNvOoPpTYuXxcCjgaijy",
)
# Invisible characters that are not format characters (category Cf): variation selectors, the
# combining grapheme joiner, Mongolian free variation selectors and the Hangul fillers.
_INVISIBLE = frozenset(
    [
        0x034F,
        0x115F,
        0x1160,
        0x180B,
        0x180C,
        0x180D,
        0x3164,
        0xFFA0,
        *range(0xFE00, 0xFE10),
        *range(0xE0100, 0xE01F0),
    ]
)
_SPACES = re.compile(r"\s+")


def fold_for_matching(text: str) -> str:
    """``text`` as blocked words are matched against it: compatibility forms folded (NFKC),
    invisible characters (zero-width spaces and joiners, soft hyphens, variation selectors)
    dropped, look-alike letters of other alphabets folded to Latin, case folded, and runs of
    white space made one space. Applied to the prompt and to the blocked words alike."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(
        ch for ch in text if unicodedata.category(ch) != "Cf" and ord(ch) not in _INVISIBLE
    )
    return _SPACES.sub(" ", text.translate(_CONFUSABLES).casefold()).strip()


@functools.lru_cache(maxsize=4096)
def _blocked_pattern(word: str) -> re.Pattern[str] | None:
    # Whole words only, so blocking "ass" does not refuse "class"; phrases match as a whole.
    folded = fold_for_matching(word)
    if not folded:
        return None
    return re.compile(rf"(?<!\w){re.escape(folded)}(?!\w)")


def find_blocked(text: str, words: Iterable[str]) -> str | None:
    """The first of ``words`` that ``text`` contains as a whole word or phrase, any case, also
    when disguised (see ``fold_for_matching``); the word comes back as the admin wrote it."""
    folded = fold_for_matching(text)
    for word in words:
        pattern = _blocked_pattern(word) if word else None
        if pattern is not None and pattern.search(folded):
            return word
    return None


@dataclasses.dataclass(frozen=True)
class GuildConfig:
    """A guild's effective settings: its own choices, bot defaults for the rest.

    ``guild_id`` is None for direct messages, which always get the defaults.
    ``daily_quota`` / ``max_queued`` of 0 mean unlimited.
    """

    guild_id: int | None
    daily_quota: int
    max_queued: int
    blocked_words: tuple[str, ...] = ()
    allowed_channels: tuple[int, ...] = ()
    exempt_roles: tuple[int, ...] = ()
    # True where the value is the guild's own choice, False where it follows the bot default.
    custom_quota: bool = False
    custom_max_queued: bool = False

    def is_exempt(self, role_ids: Iterable[int]) -> bool:
        """Whether any of the member's roles lifts the daily quota."""
        exempt = set(self.exempt_roles)
        return any(role in exempt for role in role_ids)

    def quota_for(self, role_ids: Iterable[int]) -> int | None:
        """The daily quota to pass to ``reserve_generation``: None when unlimited or exempt."""
        if self.daily_quota <= 0 or self.is_exempt(role_ids):
            return None
        return self.daily_quota

    @property
    def queued_limit(self) -> int | None:
        """The cap to pass to ``reserve_generation`` as ``max_queued`` (None: no cap)."""
        return self.max_queued if self.max_queued > 0 else None

    def channel_allowed(self, channel_id: int | None) -> bool:
        """Whether /imagine may run in this channel (no list means everywhere)."""
        return not self.allowed_channels or channel_id in self.allowed_channels

    def find_blocked(self, text: str) -> str | None:
        """The first blocked word or phrase in ``text`` (whole words, any case), if any."""
        return find_blocked(text, self.blocked_words)


def _config(
    row: GuildSettings | None, guild_id: int | None, default_quota: int, default_max_queued: int
) -> GuildConfig:
    if row is None:
        return GuildConfig(guild_id, max(0, default_quota), max(0, default_max_queued))
    return GuildConfig(
        guild_id=guild_id,
        daily_quota=row.daily_quota if row.daily_quota is not None else max(0, default_quota),
        max_queued=row.max_queued if row.max_queued is not None else max(0, default_max_queued),
        blocked_words=tuple(row.blocked_words or ()),
        allowed_channels=tuple(int(c) for c in row.allowed_channels or ()),
        exempt_roles=tuple(int(r) for r in row.exempt_roles or ()),
        custom_quota=row.daily_quota is not None,
        custom_max_queued=row.max_queued is not None,
    )


async def settings_row(session: AsyncSession, guild_id: int, now: dt.datetime) -> GuildSettings:
    """The server's settings row, made with the bot's defaults when it has none yet (inside
    the caller's transaction: every writer of a server's settings goes through it)."""
    row = await session.get(GuildSettings, guild_id)
    if row is None:
        row = GuildSettings(
            guild_id=guild_id,
            blocked_words=[],
            allowed_channels=[],
            exempt_roles=[],
            gallery_public=False,
            gallery_links_epoch=0,
            updated_at=now,
        )
        session.add(row)
    return row


def _unique_ids(ids: Sequence[int]) -> list[int]:
    return list(dict.fromkeys(int(i) for i in ids))


async def get_guild_config(
    db: Database, guild_id: int | None, *, default_quota: int, default_max_queued: int
) -> GuildConfig:
    """The guild's effective settings; DMs (None) and unknown guilds get the defaults."""
    if guild_id is None:
        return _config(None, None, default_quota, default_max_queued)
    async with db.readers() as session:
        row = await session.get(GuildSettings, guild_id)
        return _config(row, guild_id, default_quota, default_max_queued)


async def update_guild_config(
    db: Database,
    guild_id: int,
    *,
    default_quota: int,
    default_max_queued: int,
    daily_quota: int | None = None,
    max_queued: int | None = None,
    allowed_channels: Sequence[int] | None = None,
    exempt_roles: Sequence[int] | None = None,
) -> GuildConfig:
    """Change some settings (None leaves a field as it is) and return the result."""
    for name, value in (("daily_quota", daily_quota), ("max_queued", max_queued)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0 (0 means unlimited), got {value}")
    now = utcnow()
    async with db.sessions.begin() as session:
        row = await settings_row(session, guild_id, now)
        if daily_quota is not None:
            row.daily_quota = daily_quota
        if max_queued is not None:
            row.max_queued = max_queued
        if allowed_channels is not None:
            row.allowed_channels = _unique_ids(allowed_channels)
        if exempt_roles is not None:
            row.exempt_roles = _unique_ids(exempt_roles)
        row.updated_at = now
        await session.flush()
        return _config(row, guild_id, default_quota, default_max_queued)


async def reset_guild_limits(
    db: Database, guild_id: int, *, default_quota: int, default_max_queued: int
) -> GuildConfig:
    """Make the guild follow the bot-wide quota and queue defaults again."""
    now = utcnow()
    async with db.sessions.begin() as session:
        row = await session.get(GuildSettings, guild_id)
        if row is not None:
            row.daily_quota = None
            row.max_queued = None
            row.updated_at = now
            await session.flush()
        return _config(row, guild_id, default_quota, default_max_queued)


def _clean_word(word: str) -> str:
    cleaned = " ".join(word.split())
    if not cleaned:
        raise ValueError("blocked word is empty")
    if len(cleaned) > MAX_BLOCKED_WORD:
        raise ValueError(f"blocked word is longer than {MAX_BLOCKED_WORD} characters")
    return cleaned


async def add_blocked_word(db: Database, guild_id: int, word: str) -> bool:
    """Block a word or phrase; False if it was already blocked (case-insensitive)."""
    cleaned = _clean_word(word)
    async with db.sessions.begin() as session:
        row = await settings_row(session, guild_id, utcnow())
        words = list(row.blocked_words or [])
        if any(w.casefold() == cleaned.casefold() for w in words):
            return False
        # A new list object: the JSON column only notices reassignment, not in-place edits.
        row.blocked_words = [*words, cleaned]
        row.updated_at = utcnow()
        return True


async def remove_blocked_word(db: Database, guild_id: int, word: str) -> bool:
    """Unblock a word or phrase (case-insensitive); False if it was not blocked."""
    key = " ".join(word.split()).casefold()
    async with db.sessions.begin() as session:
        row = await session.get(GuildSettings, guild_id)
        if row is None:
            return False
        words = list(row.blocked_words or [])
        kept = [w for w in words if w.casefold() != key]
        if len(kept) == len(words):
            return False
        row.blocked_words = kept
        row.updated_at = utcnow()
        return True
