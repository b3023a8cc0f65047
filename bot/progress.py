"""Throttled, coalescing status-message edits.

Engine progress arrives once per denoising step (many per second on a fast GPU), but Discord
rate-limits message edits and old messages hit error 30046 when edited too often. A reporter
therefore edits at most once per ``interval`` seconds, always shows the *latest* text (steps in
between are dropped, never queued), and after ``close`` it never edits again, so a late progress
edit can never overwrite the final image.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

EditFn = Callable[[str], Awaitable[None]]


class ProgressReporter:
    """Coalesces text updates for one message into sparse edits.

    ``update`` is synchronous and cheap so the engine's per-step callback can call it from the
    event loop directly. The edit runs in a task bound to the context the reporter was created
    in (the job's), so whatever that context carries (for example discord.py's webhook adapter)
    also applies to edits triggered from engine callbacks.
    """

    def __init__(
        self,
        edit: EditFn,
        *,
        interval: float,
        clock: Callable[[], float] = time.perf_counter,
        label: str = "",
    ) -> None:
        self._edit = edit
        self._interval = interval
        self._clock = clock
        self._label = label
        self._context = contextvars.copy_context()
        self._latest: str | None = None
        self._shown: str | None = None
        self._next_at = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._editing = False
        self._closed = False
        self.edits = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def shown_text(self) -> str | None:
        """The last text successfully sent (or the text the message was created with)."""
        return self._shown

    def mark_shown(self, text: str) -> None:
        """Record that the message already shows ``text`` (its first content, sent elsewhere),
        and start the throttle window from now."""
        self._shown = text
        self._next_at = self._clock() + self._interval

    def update(self, text: str) -> None:
        """Ask for the message to show ``text``; coalesced with any pending update."""
        if self._closed or (text == self._shown and self._latest is None):
            return
        self._latest = text
        if self._task is None or self._task.done():
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._pump(), context=self._context)

    async def _pump(self) -> None:
        while self._latest is not None and not self._closed:
            delay = self._next_at - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
                if self._closed:
                    return
            text, self._latest = self._latest, None
            if text is None or text == self._shown:
                continue
            self._editing = True
            try:
                await self._edit(text)
                self._shown = text
                self.edits += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed progress edit must never kill the job
                logger.warning("progress edit %s failed: %s", self._label, exc)
            finally:
                self._editing = False
                self._next_at = self._clock() + self._interval

    def abandon(self) -> None:
        """Stop at once without waiting (shutdown): no further edits are started."""
        self._closed = True
        self._latest = None
        if self._task is not None and not self._task.done() and not self._editing:
            self._task.cancel()

    async def close(self) -> None:
        """Stop for good: drop pending text, wait for an edit already on the wire to land.

        Waiting (instead of cancelling) an in-flight edit matters: a cancelled HTTP request may
        still reach Discord *after* the final edit that follows this call.
        """
        self._closed = True
        self._latest = None
        task = self._task
        if task is None or task.done():
            return
        if self._editing:
            with contextlib.suppress(Exception):  # the pump logged it already
                await asyncio.shield(task)
        else:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if (current := asyncio.current_task()) is not None and current.cancelling():
                    raise
