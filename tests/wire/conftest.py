"""Wire-level fixtures: a Discord emulator on loopback and a way to run a real bot on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import discord
import discord.gateway
import discord.http
import pytest
import yarl

from .emulator import DiscordEmulator
from .harness import Rig


@pytest.fixture
async def emulator() -> AsyncIterator[DiscordEmulator]:
    """A fresh Discord (one guild, two channels, the bot and the owner) on a random port."""
    emu = DiscordEmulator()
    await emu.start()
    try:
        yield emu
    finally:
        await emu.close()


@pytest.fixture
def discord_endpoints() -> Iterator[None]:
    """Put discord.py's REST base and gateway URL back after a test moved them."""
    base = discord.http.Route.BASE
    gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    try:
        yield
    finally:
        discord.http.Route.BASE = base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = gateway


def point_discord_py_at(emu: DiscordEmulator) -> None:
    """What the bot's test-only settings do: aim the unmodified client at the emulator."""
    discord.http.Route.BASE = emu.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(emu.gateway_url)


@pytest.fixture
async def rig(
    emulator: DiscordEmulator,
    tmp_path: Path,
    tiny_model_dir: Path,
    discord_endpoints: None,
) -> AsyncIterator[Rig]:
    """The project bot's test rig: emulator, temp database, tiny model (see ``harness.Rig``)."""
    rig = Rig(emulator, tmp_path, tiny_model_dir)
    try:
        yield rig
    finally:
        await rig.close()
