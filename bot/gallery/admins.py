"""Gallery links are confirmed with Discord while they are used, not only when they were made.

A link records who asked, where, and whether they could manage the server when ``/gallery``
made it, and works for a day; a member demoted meanwhile must not keep seeing a private
gallery, and one who left or was banned must not keep seeing anything, until it expires. So
every page or file a server's link opens asks Discord again where the member stands
(``bot.gallery.wiring.member_standing``), at most once per ``CONFIRMED_FOR_S`` per member
(every ``UNKNOWN_FOR_S`` while Discord cannot tell): the answer is cached, and the thumbnails
of one page share one question. Until Discord answers, an admin link shows what a member sees
and a member's link asks to come back in a moment. Deleting someone else's image always asks
afresh (``bot.gallery.routes.delete``), and ``/gallery`` records what its interaction showed.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


class Standing(enum.Enum):
    """Where a member stands in a server, as Discord says now."""

    ADMIN = "admin"  # a member with Manage Server
    MEMBER = "member"  # a member without it
    GONE = "gone"  # not a member: left, kicked or banned (or the bot left the server)


# Asks Discord: a ``Standing``, a bool (a check that knows only Manage Server: True an admin,
# False a member), or None when Discord cannot tell.
AdminCheck = Callable[[int, int], Awaitable[Standing | bool | None]]


def _standing(answer: Standing | bool | None) -> Standing | None:
    if isinstance(answer, Standing) or answer is None:
        return answer
    return Standing.ADMIN if answer else Standing.MEMBER


def _is_admin(standing: Standing | None) -> bool | None:
    return None if standing is None else standing is Standing.ADMIN


# How long an answer stands: a demotion shows within this; an admin browsing costs one
# Discord request per this period.
CONFIRMED_FOR_S = 300.0
# "Could not tell" (Discord slow or down, the bot not connected yet) is asked again sooner.
UNKNOWN_FOR_S = 20.0
# Members whose answers are kept; the oldest go first beyond this (a bound, not a tuning).
MAX_ENTRIES = 4096


class AdminConfirmations:
    """Cached answers of ``check``: is this member still in that server, still an admin?"""

    def __init__(self, check: AdminCheck, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._check = check
        self._clock = clock
        # (guild, member) -> (answer, good until, when it was asked): a slow old question
        # never overwrites a newer answer.
        self._answers: dict[tuple[int, int], tuple[Standing | None, float, float]] = {}
        self._asking: dict[tuple[int, int], asyncio.Task[Standing | None]] = {}

    async def confirm(self, guild_id: int, user_id: int) -> bool | None:
        """True while Discord says the member has Manage Server there, False once it says
        not (or that they are no member), None while it cannot tell."""
        return _is_admin(await self.standing(guild_id, user_id))

    async def standing(self, guild_id: int, user_id: int) -> Standing | None:
        """Where the member stands there (cached); None while Discord cannot tell."""
        key = (guild_id, user_id)
        cached = self._answers.get(key)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        task = self._asking.get(key)
        if task is None:
            task = asyncio.create_task(self._ask(key))
            self._asking[key] = task
            task.add_done_callback(functools.partial(self._asked, key))
        return await asyncio.shield(task)

    async def fresh(self, guild_id: int, user_id: int) -> bool | None:
        """Ask Discord now (a delete), and remember the answer for the pages."""
        return _is_admin(await self._ask((guild_id, user_id)))

    def remember(self, guild_id: int, user_id: int, admin: bool) -> None:
        """What Discord just said with an interaction (``/gallery`` making a link: the member
        is in the server): a new link starts from it, not from an older answer."""
        now = self._clock()
        self._store((guild_id, user_id), Standing.ADMIN if admin else Standing.MEMBER, now)

    def _asked(self, key: tuple[int, int], task: asyncio.Task[Standing | None]) -> None:
        if self._asking.get(key) is task:
            del self._asking[key]

    async def _ask(self, key: tuple[int, int]) -> Standing | None:
        asked_at = self._clock()
        try:
            answer = _standing(await self._check(*key))
        except Exception:  # the check answers None for Discord's failures; this is a bug
            logger.exception("gallery: admin check for %s failed", key)
            answer = None
        self._store(key, answer, asked_at)
        return answer

    def _store(self, key: tuple[int, int], answer: Standing | None, asked_at: float) -> None:
        known = self._answers.get(key)
        if known is not None and known[2] > asked_at:
            return  # a newer answer arrived while this one was asked
        ttl = UNKNOWN_FOR_S if answer is None else CONFIRMED_FOR_S
        self._answers.pop(key, None)
        self._answers[key] = (answer, self._clock() + ttl, asked_at)
        while len(self._answers) > MAX_ENTRIES:
            del self._answers[next(iter(self._answers))]
