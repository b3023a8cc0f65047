"""What the job path works with, passed in: ``JobDeps``."""

from __future__ import annotations

import dataclasses

import discord

import db
from bot.guild_settings import GuildSettings
from bot.images import ImageKeeper
from bot.imagine.presenting import JobViews
from bot.settings import BotSettings
from engine.contract import ImageBackend


@dataclasses.dataclass(frozen=True, slots=True)
class JobDeps:
    """What the job path works with, passed in (the bot builds it once it has them all)."""

    client: discord.Client
    settings: BotSettings
    database: db.Database
    backend: ImageBackend
    images: ImageKeeper
    guilds: GuildSettings
    views: JobViews
