"""Discord's 3-second window: every /imagine and job button is acknowledged in time.

Normally the public status message *is* the acknowledgement and refusals are private answers;
``AckGuard`` covers the slow case (a database under heavy load) by deferring publicly first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from types import TracebackType

import discord

from bot import errors, metrics
from bot.errors import UserError
from bot.interaction import Interaction

logger = logging.getLogger(__name__)

# Discord allows 3 s to acknowledge an interaction; past this, the bot defers (see AckGuard).
ACK_DEFER_AFTER_S = 2.0


class AckGuard:
    """Makes sure an interaction is acknowledged within Discord's 3 seconds, however busy.

    Normally the public status message *is* the acknowledgement and refusals are ephemeral
    answers. If validation and the quota transaction have not finished after ``after_s``
    (a database under heavy load), the guard defers publicly ("thinking…") so the interaction
    cannot expire; the status message then replaces the thinking message, and a refusal
    deletes it and answers privately instead.
    """

    def __init__(self, interaction: Interaction, *, after_s: float = ACK_DEFER_AFTER_S) -> None:
        self.interaction = interaction
        self.after_s = after_s
        self.started = time.perf_counter()
        self.deferred = False
        self._lock = asyncio.Lock()
        self._watchdog: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AckGuard:
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._watchdog is not None and not self._watchdog.done():
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self.deferred and isinstance(exc, UserError):
            # The refusal goes out privately; the public "thinking…" must not linger. Completing
            # the deferred message first makes the refusal a separate (ephemeral) followup
            # instead of the edit of the public "thinking…" that a first followup would be.
            with contextlib.suppress(discord.HTTPException):
                await self.interaction.edit_original_response(content="Request not accepted.")
                await self.interaction.delete_original_response()

    async def _watch(self) -> None:
        await asyncio.sleep(self.after_s)
        async with self._lock:
            if self.interaction.response.is_done():
                return
            logger.warning(
                "interaction %s not answered after %.1f s; deferring",
                self.interaction.id,
                self.after_s,
            )
            await self.interaction.response.defer(thinking=True)
            self.deferred = True
            metrics.ACK_LATENCY.observe(time.perf_counter() - self.started)

    async def respond(self, content: str, view: discord.ui.View) -> int | None:
        """Post the status message as the answer; returns its id."""
        async with self._lock:
            if self._watchdog is not None and not self._watchdog.done():
                self._watchdog.cancel()
            if self.deferred:
                message = await self.interaction.edit_original_response(
                    content=content, view=view, allowed_mentions=errors.NO_MENTIONS
                )
                return message.id
            callback = await self.interaction.response.send_message(
                content, view=view, allowed_mentions=errors.NO_MENTIONS
            )
            metrics.ACK_LATENCY.observe(time.perf_counter() - self.started)
            return callback.message_id
