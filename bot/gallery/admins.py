"""Admin links are confirmed with Discord while they are used, not only when they were made.

A link records the member's Manage Server permission when ``/gallery`` made it and works for a
day; a member demoted meanwhile must not keep seeing a private gallery until it expires. So
every page or file an admin link opens asks Discord again (``bot.gallery.wiring.still_admin``),
at most once per ``CONFIRMED_FOR_S`` per member (every ``UNKNOWN_FOR_S`` while Discord cannot
tell): the answer is cached, and the thumbnails of one page share one question. Until Discord
answers yes the link shows what a member sees. Deleting someone else's image always asks
afresh (``bot.gallery.routes.delete``), and ``/gallery`` records what its interaction showed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

AdminCheck = Callable[[int, int], Awaitable[bool | None]]

# How long an answer stands: a demotion shows within this; an admin browsing costs one
# Discord request per this period.
CONFIRMED_FOR_S = 300.0
# "Could not tell" (Discord slow or down, the bot not connected yet) is asked again sooner.
UNKNOWN_FOR_S = 20.0
# Members whose answers are kept; the oldest go first beyond this (a bound, not a tuning).
MAX_ENTRIES = 4096


class AdminConfirmations:
    """Cached answers of ``check`` (is this member still an admin of that server?)."""

    def __init__(self, check: AdminCheck, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._check = check
        self._clock = clock
        # (guild, member) -> (answer, good until, when it was asked): a slow old question
        # never overwrites a newer answer.
        self._answers: dict[tuple[int, int], tuple[bool | None, float, float]] = {}
        self._asking: dict[tuple[int, int], asyncio.Task[bool | None]] = {}

    async def confirm(self, guild_id: int, user_id: int) -> bool | None:
        """True while Discord says the member has Manage Server there, False once it says
        not, None while it cannot tell."""
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
        return await self._ask((guild_id, user_id))

    def remember(self, guild_id: int, user_id: int, admin: bool) -> None:
        """What Discord just said with an interaction (``/gallery`` making a link): a new
        link starts from it, not from an older answer."""
        now = self._clock()
        self._store((guild_id, user_id), admin, now)

    def _asked(self, key: tuple[int, int], task: asyncio.Task[bool | None]) -> None:
        if self._asking.get(key) is task:
            del self._asking[key]

    async def _ask(self, key: tuple[int, int]) -> bool | None:
        asked_at = self._clock()
        try:
            answer = await self._check(*key)
        except Exception:  # the check answers None for Discord's failures; this is a bug
            logger.exception("gallery: admin check for %s failed", key)
            answer = None
        self._store(key, answer, asked_at)
        return answer

    def _store(self, key: tuple[int, int], answer: bool | None, asked_at: float) -> None:
        known = self._answers.get(key)
        if known is not None and known[2] > asked_at:
            return  # a newer answer arrived while this one was asked
        ttl = UNKNOWN_FOR_S if answer is None else CONFIRMED_FOR_S
        self._answers.pop(key, None)
        self._answers[key] = (answer, self._clock() + ttl, asked_at)
        while len(self._answers) > MAX_ENTRIES:
            del self._answers[next(iter(self._answers))]
