"""TEST ONLY: point discord.py at a Discord emulator instead of discord.com.

The wire tests run ``python -m bot`` as a real process against an emulator on loopback; the
only way in is the environment, so ``python -m bot`` reads two variables here, apart from the
production ``BotSettings``: ``IMAGINE_DISCORD_API_BASE`` and ``IMAGINE_DISCORD_GATEWAY_URL``.
Production leaves both unset, and then nothing changes. Whenever one is set the bot says so in
its log, so a stray variable cannot quietly send a production bot elsewhere.
"""

from __future__ import annotations

import logging

import discord
import yarl
from pydantic import Field, field_validator

from engine.settings import ImagineBaseSettings

logger = logging.getLogger(__name__)


class DiscordEndpoints(ImagineBaseSettings):
    """TEST ONLY: the REST base and gateway URL of a Discord emulator (empty: discord.com)."""

    discord_api_base: str | None = Field(
        None, description="TEST ONLY: REST base URL, e.g. http://127.0.0.1:8999/api/v10"
    )
    discord_gateway_url: str | None = Field(
        None, description="TEST ONLY: gateway websocket URL, e.g. ws://127.0.0.1:8999/gateway"
    )

    @field_validator("discord_api_base", "discord_gateway_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value


def apply(endpoints: DiscordEndpoints | None = None) -> None:
    """Aim discord.py's REST and gateway at the emulator ``endpoints`` name (by default, the
    ones in the environment); a no-op when neither is set."""
    endpoints = endpoints if endpoints is not None else DiscordEndpoints()
    if endpoints.discord_api_base:
        discord.http.Route.BASE = endpoints.discord_api_base.rstrip("/")
        logger.warning("TEST ONLY: Discord REST base is %s", discord.http.Route.BASE)
    if endpoints.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(endpoints.discord_gateway_url)
        logger.warning("TEST ONLY: Discord gateway is %s", endpoints.discord_gateway_url)
