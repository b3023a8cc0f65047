"""Build the bot: ``create_bot(settings, backend=None, db=None)``, configured and unconnected.

Outside harnesses (SimCord, the wire emulator) drive the very object ``python -m bot`` runs. All
start-up work that needs the event loop happens in ``setup_hook``: open the database, sync the
built-in styles, start the health server and the image backend, load the cogs, register the
restart-proof buttons, resume unfinished jobs and sync the slash commands.
"""

from __future__ import annotations

import asyncio
import logging

import discord
from discord.ext import commands

import db as dbmod
from bot import errors, views
from bot.client import NotStarted
from bot.cogs import EXTENSIONS
from bot.guild_settings import GuildSettings
from bot.health import HealthServer
from bot.housekeeping import Housekeeping
from bot.images import ImageKeeper
from bot.imagine import JobDeps, JobService, style_description
from bot.presence import EnginePresence
from bot.settings import BotSettings, CommandSync
from bot.store import ImageStore
from engine.backends import build_backend, read_backend_settings
from engine.contract import EngineStatus, ImageBackend
from engine.presets import BUILTIN_STYLES

logger = logging.getLogger(__name__)


class ImagineBot(commands.Bot):
    """The Discord front-end. It holds the settings, the database and the image backend; its
    parts see it as ``bot.client.ImagineClient``."""

    def __init__(
        self,
        settings: BotSettings,
        *,
        backend: ImageBackend | None = None,
        database: dbmod.Database | None = None,
    ) -> None:
        intents = discord.Intents.none()
        intents.guilds = True  # guild, channel and role cache; no privileged intents needed
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            allowed_mentions=discord.AllowedMentions.none(),
            max_messages=None,
        )
        self.settings = settings
        self._backend = backend
        self._db = database
        self._owns_backend = backend is None
        self._owns_db = database is None
        self.guild_settings = GuildSettings(self._database, settings, self.engine_status)
        self._jobs: JobService | None = None
        self.health: HealthServer | None = None
        # Every delivered image is kept here (the Vary buttons, the web gallery); the store
        # touches the disk only when an image is written, read or swept.
        self.store: ImageStore | None = ImageStore(
            settings.image_dir,
            max_age_days=settings.image_max_age_days or None,
            max_total_mb=settings.image_max_total_mb or None,
        )
        self.images = ImageKeeper(lambda: self.store, self._database)
        self._sweeper: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self.presence = EnginePresence(
            self.engine_status, self._change_presence, lambda: self.is_ready()
        )
        self._presence: asyncio.Task[None] | None = None
        self.started_at = discord.utils.utcnow()
        self._recovery: asyncio.Task[None] | None = None
        self._services_closed = False
        errors.install(self.tree)

    @property
    def db(self) -> dbmod.Database:
        """The open database (``setup_hook`` opens it before any interaction arrives)."""
        if self._db is None:
            raise NotStarted("the database opens in setup_hook")
        return self._db

    def _database(self) -> dbmod.Database:
        return self.db

    @property
    def backend(self) -> ImageBackend:
        """The image backend (``setup_hook`` builds and starts it)."""
        if self._backend is None:
            raise NotStarted("the image backend starts in setup_hook")
        return self._backend

    @property
    def jobs(self) -> JobService:
        """The job service (made in ``setup_hook``, before any interaction arrives)."""
        if self._jobs is None:
            raise NotStarted("the job service starts in setup_hook")
        return self._jobs

    async def engine_status(self) -> EngineStatus:
        """What the image backend is doing now."""
        return await self.backend.status()

    async def setup_hook(self) -> None:
        settings = self.settings
        if self._db is None:
            self._db = await dbmod.Database.open(settings.database_url)
        await dbmod.sync_builtin_styles(
            self._db,
            [
                (s.name, s.template, s.negative, style_description(s))
                for s in BUILTIN_STYLES.values()
            ],
        )
        if settings.health_port:
            # Up before the (possibly slow) model load, so a container reports "starting" as 503.
            self.health = HealthServer(self, settings.health_host, settings.health_port)
            await self.health.start()
        if self._backend is None:
            redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
            self._backend = build_backend(read_backend_settings(redis_url))
        await self._backend.start()
        deps = JobDeps(
            client=self,
            settings=settings,
            database=self._db,
            backend=self._backend,
            images=self.images,
            guilds=self.guild_settings,
            views=views.Presentation(),
        )
        self._jobs = JobService(deps)
        # Presence and the "model is loading" note: the engine may still be loading now.
        self._jobs.follower.note = self.presence.loading_note
        self._presence = asyncio.create_task(self.presence.forever(), name="imagine-presence")
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.add_dynamic_items(*views.DYNAMIC_ITEMS)
        self._recovery = asyncio.create_task(self._jobs.recover(), name="imagine-recovery")
        self._sweeper = asyncio.create_task(
            self.images.sweep_forever(settings.image_sweep_interval_s), name="imagine-retention"
        )
        self._housekeeping = asyncio.create_task(
            Housekeeping(
                self._database,
                self.images.delete_unreferenced,
                retention_days=settings.history_retention_days,
                now=discord.utils.utcnow,
            ).forever(settings.housekeeping_interval_s),
            name="imagine-housekeeping",
        )
        await self.sync_commands()

    async def sync_commands(self) -> None:
        mode = self.settings.command_sync
        if mode == CommandSync.OFF:
            logger.info("command sync is off; using the commands Discord already has")
            return
        if mode == CommandSync.GUILD:
            assert self.settings.dev_guild_id is not None
            guild = discord.Object(self.settings.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            logger.info("synced %d commands to guild %s", len(synced), guild.id)
            return
        synced = await self.tree.sync()
        logger.info("synced %d global commands", len(synced))

    async def on_ready(self) -> None:
        user = self.user
        logger.info(
            "connected as %s (%s) in %d server(s)", user, user.id if user else "?", len(self.guilds)
        )
        await self.presence.poll_once()  # what the engine is doing, shown at once

    async def _change_presence(
        self, *, status: discord.Status, activity: discord.BaseActivity
    ) -> None:
        # Looked up at call time, so a harness can watch what the bot shows.
        await self.change_presence(status=status, activity=activity)

    async def close_services(self) -> None:
        """Stop following jobs (they stay resumable), then close what this bot opened."""
        if self._services_closed:
            return
        self._services_closed = True
        for task in (self._recovery, self._sweeper, self._housekeeping, self._presence):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._jobs is not None:
            await self._jobs.close()
        if self.health is not None:
            await self.health.stop()
        if self._owns_backend and self._backend is not None:
            try:
                await self._backend.close()
            except Exception:
                logger.exception("closing the image backend failed")
        if self._owns_db and self._db is not None:
            await self._db.close()

    async def close(self) -> None:
        await self.close_services()
        await super().close()


def create_bot(
    settings: BotSettings | None = None,
    backend: ImageBackend | None = None,
    db: dbmod.Database | None = None,
) -> ImagineBot:
    """The configured, unconnected bot.

    ``backend`` (the ``ImageBackend``) and ``db`` are for harnesses that bring their own (the
    bot then leaves them open at close); by default the bot builds the backend the settings
    choose and opens the database in ``setup_hook``.
    """
    return ImagineBot(settings or BotSettings(), backend=backend, database=db)
