"""What the bot's parts need from the bot object, as a protocol: ``ImagineClient``.

Cogs, buttons and forms get the bot from ``interaction.client`` (typed ``discord.Client``) and
ask ``imagine_client`` for this view of it: its job service, database, image store, settings
and server settings. ``bot.app.ImagineBot`` is the one implementation; nothing below it imports
that class, so there is no import circle through it and a part can be tested against a smaller
bot. The job path itself (``bot.imagine``) needs none of this: it is given what it works with
(``JobDeps``).
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol, runtime_checkable

import discord

import db as dbmod
from bot.guild_settings import GuildSettings
from bot.images import ImageKeeper
from bot.imagine.service import JobService
from bot.settings import BotSettings
from bot.store import ImageStore
from engine.contract import EngineStatus


class NotStarted(RuntimeError):
    """A service the bot starts in ``setup_hook`` (the database, the image backend, the job
    service) was asked for before it started: the health server answers before that."""


@runtime_checkable
class ImagineClient(Protocol):
    """The bot as its parts use it: its services, and the few ``discord.Client`` members
    they read (``bot.app.ImagineBot`` is a ``commands.Bot``)."""

    settings: BotSettings
    guild_settings: GuildSettings
    images: ImageKeeper
    store: ImageStore | None
    started_at: dt.datetime

    @property
    def db(self) -> dbmod.Database:
        """The open database; ``NotStarted`` before ``setup_hook`` opened it."""
        ...

    @property
    def jobs(self) -> JobService:
        """The job service; ``NotStarted`` before ``setup_hook`` made it."""
        ...

    async def engine_status(self) -> EngineStatus:
        """What the image backend is doing now; ``NotStarted`` before it started."""
        ...

    @property
    def latency(self) -> float: ...

    def is_ready(self) -> bool: ...

    def is_closed(self) -> bool: ...

    def get_guild(self, id: int, /) -> discord.Guild | None: ...

    def get_user(self, id: int, /) -> discord.User | None: ...


def imagine_client(client: discord.Client) -> ImagineClient:
    """The bot behind an interaction, as its parts see it."""
    if not isinstance(client, ImagineClient):
        raise TypeError(f"{type(client).__name__} is not the imagine bot")
    return client
