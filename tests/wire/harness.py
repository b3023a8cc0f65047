"""Running a real discord.py bot against the emulator inside a test."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator

import discord
from PIL import Image

logger = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def running(
    client: discord.Client, token: str, *, ready_within: float = 30.0
) -> AsyncIterator[discord.Client]:
    """Start ``client`` as ``client.start(token)`` would in production, yield once it is ready
    (logged in, gateway READY, guilds received), and close it cleanly afterwards.

    A bot that dies while starting fails the test with its own exception rather than a timeout.
    """
    task = asyncio.create_task(client.start(token), name="bot.start")
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ready_within
        while not client.is_ready():
            if task.done():
                task.result()
                raise AssertionError("the bot stopped before it became ready")
            if loop.time() > deadline:
                raise AssertionError(f"the bot was not ready within {ready_within}s")
            await asyncio.sleep(0.02)
        yield client
    finally:
        await client.close()
        try:
            await asyncio.wait_for(task, 15)
        except (asyncio.CancelledError, TimeoutError):
            task.cancel()
        except Exception:
            logger.exception("the bot's start task ended with an error")


def png_dimensions(data: bytes) -> tuple[int, int]:
    """Decode PNG bytes the way a Discord client would and return (width, height)."""
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG", image.format
        image.load()
        return image.size
