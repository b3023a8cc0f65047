"""Housekeeping while the bot runs: what must not linger in the database.

- Interaction tokens: kept only for Discord's 15 minutes (a restarted bot may still edit the
  original answer with one); after that they are useless and still secrets, so they go.
- History (``IMAGINE_HISTORY_RETENTION_DAYS``, 0 = forever): finished generations older than
  that go, with their stored image rows, and the image files no row references any more.
  Unfinished jobs are never touched (``db.prune_history``).

It runs every ``IMAGINE_HOUSEKEEPING_INTERVAL_S`` (and at start-up through recovery), so a bot
that stays up for months keeps its promises as well as one that restarts daily.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable

import db

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Swept:
    """What one round of housekeeping removed."""

    tokens: int = 0
    generations: int = 0
    images: int = 0
    files: int = 0


class Housekeeping:
    """One round (``run_once``) and the loop that repeats it (``forever``)."""

    def __init__(
        self,
        database: Callable[[], db.Database],
        delete_files: Callable[[tuple[str, ...]], Awaitable[int]],
        *,
        retention_days: float,
        now: Callable[[], dt.datetime],
    ) -> None:
        self._database = database
        # ``ImageKeeper.delete_unreferenced``: the one path that deletes a file no row names
        # (under its per-file lock, checking the rows again).
        self._delete_files = delete_files
        self.retention_days = retention_days
        self._now = now

    async def run_once(self) -> Swept:
        """Forget expired tokens and prune old history; each part logs its own failure."""
        database = self._database()
        now = self._now()
        tokens = 0
        try:
            tokens = await db.forget_expired_tokens(database, now=now)
            if tokens:
                logger.debug("forgot %d expired interaction tokens", tokens)
        except Exception:
            logger.exception("could not forget expired interaction tokens")
        if self.retention_days <= 0:
            return Swept(tokens=tokens)
        try:
            pruned = await db.prune_history(
                database, older_than=now - dt.timedelta(days=self.retention_days)
            )
        except Exception:
            logger.exception("history retention failed; it tries again later")
            return Swept(tokens=tokens)
        files = await self._delete_files(pruned.unreferenced)
        return Swept(tokens, pruned.generations, pruned.images, files)

    async def forever(self, interval_s: float) -> None:
        """``run_once`` every ``interval_s`` until cancelled; a failed round is logged and the
        next one tries again."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("housekeeping failed")
