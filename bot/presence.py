"""What the image engine is doing, for everyone to see: the bot's presence, and the note an
/imagine gets while the model is still loading.

The first start downloads about 58 GB, loads and warms up the model: minutes to an hour, during
which the bot is already online (``LocalEngine.start`` returns at once). ``EnginePresence``
polls the backend's ``status()``; while the engine is not ready it polls often and shows the
stage and progress as the bot's status ("Loading the model: downloading 12.3 of 57.7 GB"),
idle; a failed load shows as do-not-disturb; a ready engine as online. It also keeps the last
snapshot, so a job's status message can say "the model is loading (about 6 min)" without
asking the backend again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import discord

from bot import render
from engine.contract import EngineStatus

logger = logging.getLogger(__name__)

POLL_LOADING_S = 5.0
POLL_READY_S = 300.0
# Discord limits presence updates; progress changes at most this often (a change of state,
# ready or failed, goes out at once).
PRESENCE_MIN_INTERVAL_S = 20.0
STATUS_TIMEOUT_S = 5.0


class ChangePresence(Protocol):
    """``discord.Client.change_presence``, as the presence uses it."""

    async def __call__(self, *, status: discord.Status, activity: discord.BaseActivity) -> None: ...


class EnginePresence:
    """Polls the backend and mirrors its state in the bot's presence (see the module doc)."""

    def __init__(
        self,
        status: Callable[[], Awaitable[EngineStatus]],
        change_presence: ChangePresence,
        connected: Callable[[], bool],
    ) -> None:
        self._status = status
        self._change = change_presence
        self._connected = connected
        self.last: EngineStatus | None = None
        self._shown: tuple[discord.Status, str] | None = None
        self._shown_at = -math.inf

    # ------------------------------------------------------------------ what jobs say
    def loading_note(self) -> str | None:
        """The line an /imagine gets while the model loads (None once it is ready)."""
        last = self.last
        if last is None or last.ready or last.loading is None:
            return None
        return render.model_loading_line(last.load_eta_s)

    # ------------------------------------------------------------------ presence
    @staticmethod
    def presence_for(status: EngineStatus | None) -> tuple[discord.Status, str]:
        """The presence for an engine snapshot (None: the backend did not answer)."""
        if status is None:
            return discord.Status.dnd, "Image engine unreachable"
        if status.load_error is not None:
            return discord.Status.dnd, "The model could not be loaded"
        if status.ready:
            return discord.Status.online, "Ready: /imagine"
        if status.loading is not None:
            return discord.Status.idle, render.clip(
                f"Getting ready: {render.loading_text(status)}", 128
            )
        return discord.Status.idle, "Image engine not ready"

    async def poll_once(self) -> EngineStatus | None:
        """Read the backend's status, keep it, and update the presence if it changed."""
        status: EngineStatus | None
        try:
            async with asyncio.timeout(STATUS_TIMEOUT_S):  # in this task: no helper task
                status = await self._status()
        except Exception as exc:  # an unreachable backend is a state to show, not a crash
            logger.debug("engine status unavailable: %s", exc)
            status = None
        if status is not None:
            self.last = status
        await self._show(self.presence_for(status))
        return status

    async def _show(self, wanted: tuple[discord.Status, str]) -> None:
        if wanted == self._shown or not self._connected():
            return
        now = time.monotonic()
        same_state = self._shown is not None and self._shown[0] == wanted[0]
        if same_state and now - self._shown_at < PRESENCE_MIN_INTERVAL_S:
            return
        try:
            await self._change(status=wanted[0], activity=discord.CustomActivity(name=wanted[1]))
        except Exception as exc:  # cosmetic: never let it stop the loop
            logger.debug("could not change the presence: %s", exc)
            return
        self._shown, self._shown_at = wanted, now

    async def forever(self) -> None:
        """Poll until cancelled: often while the engine is not ready, rarely once it is."""
        while True:
            status = await self.poll_once()
            ready = status is not None and status.ready
            await asyncio.sleep(POLL_READY_S if ready else POLL_LOADING_S)
