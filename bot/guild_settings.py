"""A server's limits and styles, cached for the 3-second path and changed only through here.

/imagine reads a guild's limits and styles on every request (autocomplete on every keystroke),
so they are cached. Every admin write (limits, exempt roles, channels, blocked words, styles)
goes through this service, which drops that guild's cache itself: no handler can forget to.
The TTL only covers edits made straight in the database.

The service also knows the image engine's per-member ceiling (``EngineStatus``), because
"what applies here" is the smaller of the server's ``max_queued`` and that ceiling.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, TypedDict

from discord import app_commands

import db as dbmod
from bot import render
from bot.settings import BotSettings
from db import gallery as gallery_db
from engine.contract import EngineStatus

logger = logging.getLogger(__name__)

CACHE_TTL_S = 60.0
# How long /imagine may wait for the backend's status when the ceiling is not known yet.
CEILING_LOOKUP_S = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class QueueLimit:
    """The cap on images one member may have waiting or being made here.

    ``limit`` is what ``reserve_generation`` enforces (None: no cap at all); ``by_ceiling``
    says it is the engine's bot-wide ceiling rather than the server's own ``max_queued``.
    """

    limit: int | None
    by_ceiling: bool = False


def queue_limit(max_queued: int, ceiling: int | None) -> QueueLimit:
    """The effective cap: the server's ``max_queued`` (0: none), never above the ceiling."""
    own = max_queued if max_queued > 0 else None
    if ceiling is not None and (own is None or own > ceiling):
        return QueueLimit(ceiling, by_ceiling=True)
    return QueueLimit(own)


class GuildDefaults(TypedDict):
    """The bot-wide defaults a guild without its own limits follows."""

    default_quota: int
    default_max_queued: int


IdList = Literal["allowed_channels", "exempt_roles"]


class GuildSettings:
    """Owns the cache of every guild's limits and styles; the only writer of either."""

    def __init__(
        self,
        database: Callable[[], dbmod.Database],
        settings: BotSettings,
        engine_status: Callable[[], Awaitable[EngineStatus]],
        *,
        ttl_s: float = CACHE_TTL_S,
    ) -> None:
        self._database = database
        self.settings = settings
        self._engine_status = engine_status
        self._ttl_s = ttl_s
        self._configs: dict[int | None, tuple[float, dbmod.GuildConfig]] = {}
        self._styles: dict[int | None, tuple[float, list[dbmod.Style]]] = {}
        self._ceiling: tuple[float, int | None] | None = None

    @property
    def db(self) -> dbmod.Database:
        return self._database()

    @property
    def _defaults(self) -> GuildDefaults:
        return GuildDefaults(
            default_quota=self.settings.default_daily_quota,
            default_max_queued=self.settings.default_max_queued,
        )

    def _forget(self, guild_id: int | None) -> None:
        self._configs.pop(guild_id, None)
        self._styles.pop(guild_id, None)

    # ------------------------------------------------------------------ reads (cached)
    async def config(self, guild_id: int | None) -> dbmod.GuildConfig:
        """The guild's limits, cached: /imagine must answer within 3 s even under load."""
        cached = self._configs.get(guild_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        config = await dbmod.get_guild_config(self.db, guild_id, **self._defaults)
        self._configs[guild_id] = (time.monotonic() + self._ttl_s, config)
        return config

    async def styles(self, guild_id: int | None) -> list[dbmod.Style]:
        """The styles members can pick here (the guild's own and the built-ins it does not
        shadow), cached like the limits; autocomplete asks on every keystroke."""
        cached = self._styles.get(guild_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        styles = await dbmod.list_styles(self.db, guild_id)
        self._styles[guild_id] = (time.monotonic() + self._ttl_s, styles)
        return styles

    async def style(self, guild_id: int | None, name: str) -> dbmod.Style | None:
        """A style members can pick here, by name (any case)."""
        key = dbmod.style_key(name)
        return next((s for s in await self.styles(guild_id) if s.name_key == key), None)

    async def ceiling(self) -> int | None:
        """The engine's per-member ceiling (None: none, or the backend cannot say).

        Asked from the backend at most once per TTL; a backend that does not answer in time
        leaves the last known value, so /imagine never waits on a slow backend twice.
        """
        cached = self._ceiling
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        known = cached[1] if cached is not None else None
        try:
            status = await asyncio.wait_for(self._engine_status(), CEILING_LOOKUP_S)
            known = status.queued_ceiling_per_user
        except Exception as exc:  # a status is a nicety here; the engine still enforces it
            logger.debug("engine ceiling unavailable: %s", exc)
        self._ceiling = (time.monotonic() + self._ttl_s, known)
        return known

    async def queue_limit(self, config: dbmod.GuildConfig) -> QueueLimit:
        """What stops a member here: the server's cap or, above it, the engine's ceiling."""
        return queue_limit(config.max_queued, await self.ceiling())

    # ------------------------------------------------------------------ writes (drop the cache)
    async def update_limits(
        self, guild_id: int, *, daily_quota: int | None = None, max_queued: int | None = None
    ) -> dbmod.GuildConfig:
        """Set the daily quota and/or the queued cap (None leaves one as it is)."""
        try:
            return await dbmod.update_guild_config(
                self.db,
                guild_id,
                **self._defaults,
                daily_quota=daily_quota,
                max_queued=max_queued,
            )
        finally:
            self._forget(guild_id)

    async def reset_limits(self, guild_id: int) -> dbmod.GuildConfig:
        """Follow the bot's default quota and queued cap again."""
        try:
            return await dbmod.reset_guild_limits(self.db, guild_id, **self._defaults)
        finally:
            self._forget(guild_id)

    async def set_gallery_public(self, guild_id: int, public: bool) -> bool:
        """Let members see the server's whole web gallery (or only their own images again);
        returns whether it changed. The gallery reads the switch on every page."""
        try:
            return await gallery_db.set_gallery_public(self.db, guild_id, public)
        finally:
            self._forget(guild_id)

    async def revoke_gallery_links(self, guild_id: int) -> int:
        """End every gallery link of the server given out so far (``dbmod.gallery``: links carry
        the server's link generation); returns the new generation."""
        try:
            return await gallery_db.revoke_gallery_links(self.db, guild_id)
        finally:
            self._forget(guild_id)

    async def _change_ids(
        self, guild_id: int, field: IdList, item: int | None, *, add: bool
    ) -> tuple[bool, dbmod.GuildConfig]:
        """Add ``item`` to (or remove it from) a list of ids; ``item`` None with ``add`` False
        clears the list. Returns whether anything changed, and the settings after."""
        config = await self.config(guild_id)
        current: tuple[int, ...] = getattr(config, field)
        if item is None:
            wanted: list[int] = []
        elif add:
            wanted = [*current, item] if item not in current else list(current)
        else:
            wanted = [i for i in current if i != item]
        if item is not None and len(wanted) == len(current):
            return False, config
        try:
            if field == "allowed_channels":
                config = await dbmod.update_guild_config(
                    self.db, guild_id, **self._defaults, allowed_channels=wanted
                )
            else:
                config = await dbmod.update_guild_config(
                    self.db, guild_id, **self._defaults, exempt_roles=wanted
                )
        finally:
            self._forget(guild_id)
        return True, config

    async def add_exempt_role(self, guild_id: int, role_id: int) -> tuple[bool, dbmod.GuildConfig]:
        """Members with this role get no daily quota; False if it already was exempt."""
        return await self._change_ids(guild_id, "exempt_roles", role_id, add=True)

    async def remove_exempt_role(
        self, guild_id: int, role_id: int
    ) -> tuple[bool, dbmod.GuildConfig]:
        return await self._change_ids(guild_id, "exempt_roles", role_id, add=False)

    async def allow_channel(self, guild_id: int, channel_id: int) -> tuple[bool, dbmod.GuildConfig]:
        """/imagine works in this channel (and then only in the listed ones)."""
        return await self._change_ids(guild_id, "allowed_channels", channel_id, add=True)

    async def disallow_channel(
        self, guild_id: int, channel_id: int
    ) -> tuple[bool, dbmod.GuildConfig]:
        return await self._change_ids(guild_id, "allowed_channels", channel_id, add=False)

    async def allow_every_channel(self, guild_id: int) -> dbmod.GuildConfig:
        return (await self._change_ids(guild_id, "allowed_channels", None, add=False))[1]

    async def add_blocked_word(self, guild_id: int, word: str) -> bool:
        """Refuse prompts with this word or phrase; False if it was blocked already."""
        try:
            return await dbmod.add_blocked_word(self.db, guild_id, word)
        finally:
            self._forget(guild_id)

    async def remove_blocked_word(self, guild_id: int, word: str) -> bool:
        try:
            return await dbmod.remove_blocked_word(self.db, guild_id, word)
        finally:
            self._forget(guild_id)

    async def add_style(
        self,
        guild_id: int,
        name: str,
        *,
        template: str,
        negative: str,
        description: str,
        created_by: int,
    ) -> dbmod.Style:
        """A new style of the guild's own (``dbmod.StyleExists`` if it has one by that name)."""
        try:
            return await dbmod.add_style(
                self.db, guild_id, name, template, negative, description, created_by
            )
        finally:
            self._forget(guild_id)

    async def edit_style(self, guild_id: int, name: str, **fields: str | None) -> dbmod.Style:
        """Change one of the guild's own styles (``dbmod.StyleNotFound`` otherwise)."""
        try:
            return await dbmod.edit_style(self.db, guild_id, name, **fields)
        finally:
            self._forget(guild_id)

    async def remove_style(self, guild_id: int, name: str) -> bool:
        try:
            return await dbmod.remove_style(self.db, guild_id, name)
        finally:
            self._forget(guild_id)


def style_choices(
    styles: Sequence[dbmod.Style], current: str, *, own_only: bool = False
) -> list[app_commands.Choice[str]]:
    """Autocomplete choices for a style option: names that start with what was typed first,
    then names that contain it, then descriptions that do (Discord shows 25). ``own_only``:
    just the guild's own styles (the ones /styles edit and remove can change)."""
    needle = current.strip().casefold()
    pool = [s for s in styles if not (own_only and s.builtin)]
    starts = [s for s in pool if s.name_key.startswith(needle)]
    contains = [s for s in pool if needle and needle in s.name_key and s not in starts]
    described = [
        s
        for s in pool
        if needle and needle in s.description.casefold() and s not in starts + contains
    ]
    choices = []
    for style in (starts + contains + described)[:25]:
        label = style.name if not style.description else f"{style.name} — {style.description}"
        choices.append(app_commands.Choice(name=render.clip(label, 100), value=style.name[:100]))
    return choices
