"""/status: what the image engine is doing, for members and admins alike."""

from __future__ import annotations

import asyncio
import logging
import math

import discord
from discord import app_commands
from discord.ext import commands

from bot import errors, render
from bot.client import ImagineClient, imagine_client
from bot.interaction import Interaction

logger = logging.getLogger(__name__)

STATUS_TIMEOUT_S = 5.0


class StatusCog(commands.Cog):
    def __init__(self, bot: ImagineClient) -> None:
        self.bot = bot

    @app_commands.command(
        name="status", description="Queue, model, GPU and speed of the image engine"
    )
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    @app_commands.allowed_installs(guilds=True, users=False)
    async def status(self, interaction: Interaction) -> None:
        uptime = (discord.utils.utcnow() - self.bot.started_at).total_seconds()
        try:
            latency: float | None = self.bot.latency * 1000
        except AttributeError:  # no gateway connection object
            latency = None
        if latency is not None and not math.isfinite(latency):
            latency = None
        store = await self.bot.images.report()  # the image store's line (never raises)
        try:
            snapshot = await asyncio.wait_for(self.bot.engine_status(), STATUS_TIMEOUT_S)
            embed = render.status_embed(
                snapshot,
                uptime_s=uptime,
                latency_ms=latency,
                owners=self._owners(interaction),
                store=store,
            )
        except Exception as exc:  # a broken backend is exactly what /status must report
            logger.warning("backend status failed: %s", exc)
            embed = render.status_embed(
                None, uptime_s=uptime, latency_ms=latency, error=str(exc), store=store
            )
        await errors.send_ephemeral(interaction, embed=embed)

    def _owners(self, interaction: Interaction) -> dict[str, int]:
        """Requesters of the jobs this member may see named: this server's, or in a DM only
        the member's own. Whose image runs in another server is none of their business."""
        guild_id = interaction.guild_id
        return {
            key: job.user_id
            for key, job in self.bot.jobs.follower.jobs.items()
            if job.guild_id == guild_id
            and (guild_id is not None or job.user_id == interaction.user.id)
        }


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(StatusCog(imagine_client(bot)))
