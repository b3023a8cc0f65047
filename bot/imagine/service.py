"""The job path: reserve → submit → answer → follow → finish.

/imagine goes through ``_start``; Reroll, Variations, Vary and Remix through ``start_from`` (a
finished job's request with new seeds), which ends in ``_start`` too; an edit
(``bot.edit.service``) calls ``_start`` with its inputs kept; a job resumed after a restart
joins at ``submit``. The Cancel button is ``bot.imagine.cancelling``. Every ending (an image
delivered, an engine failure, a cancel, an upload Discord refused, a reply nobody saw, a job
that cannot be resumed) goes through ``Finisher.end`` (``bot.imagine.finish``), so recording,
refunding, counting and telling never drift apart.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import discord

import db
from bot import errors, metrics, render, views
from bot.delivery import TOKEN_LIFETIME, StatusMessage, interaction_time
from bot.edit import service as edit
from bot.errors import UserError
from bot.imagine import cancelling, policy, recovery, variations
from bot.imagine.ack import AckGuard
from bot.imagine.finish import Finisher
from bot.imagine.following import Follower
from bot.imagine.job import Job, Outcome, follow_job, request_for, utcnow
from bot.imagine.policy import Admitted, ImagineParams
from engine.contract import FailureKind, JobFailed, JobHandle, JobResult, Mode
from engine.presets import MAX_SEED

if TYPE_CHECKING:
    from bot.app import ImagineBot

logger = logging.getLogger(__name__)

VARIATION_COUNT = 2


class JobService:
    """Owns every job this bot process follows."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.settings = bot.settings
        self.guilds = bot.guild_settings
        self.finish = Finisher(bot)
        self.follower = Follower(
            lambda: self.bot.backend,
            lambda: self.db,
            interval_s=self.settings.progress_interval_s,
        )

    @property
    def db(self) -> db.Database:
        assert self.bot.db is not None
        return self.bot.db

    @property
    def backend(self) -> Any:
        return self.bot.backend

    def active_keys(self) -> list[str]:
        return list(self.follower.jobs)

    def owners(self) -> dict[str, int]:
        """Requester of every job this process follows, by job key."""
        return self.follower.owners()

    # ------------------------------------------------------------------ entry points
    async def imagine(self, interaction: discord.Interaction[Any], params: ImagineParams) -> None:
        """/imagine: validate, charge, queue and answer; the job then runs on its own."""
        async with AckGuard(interaction) as guard:
            admitted = await policy.admit(
                interaction,
                self.guilds,
                prompt=params.prompt,
                negative=params.negative,
                style=params.style,
                aspect=params.aspect,
                seed=params.seed,
            )
            await self._start(
                interaction,
                guard,
                admitted,
                aspect=params.aspect,
                mode=Mode(params.mode),
                seeds=[params.seed],
                kind=db.GenerationKind.IMAGINE,
                parent_key=None,
            )

    async def reroll(self, interaction: discord.Interaction[Any], parent_key: str) -> None:
        """Same parameters, new seed: a new generation charged to whoever clicked."""
        parent = await db.get_generation(self.db, parent_key)
        if parent is not None and parent.kind == db.GenerationKind.EDIT:
            await edit.reroll(self, interaction, parent)  # the same edit of the same images
            return
        await self._again(interaction, parent_key, kind=db.GenerationKind.REROLL, count=1)

    async def variations(self, interaction: discord.Interaction[Any], parent_key: str) -> None:
        """Two more seeds of the same prompt: two new generations."""
        await self._again(
            interaction, parent_key, kind=db.GenerationKind.VARIATION, count=VARIATION_COUNT
        )

    async def vary(
        self, interaction: discord.Interaction[Any], parent_key: str, *, strong: bool
    ) -> None:
        """Vary (Subtle / Strong): image-to-image from the stored image, new seed."""
        await variations.vary(self, interaction, parent_key, strong=strong)

    async def remix(
        self,
        interaction: discord.Interaction[Any],
        parent_key: str,
        *,
        prompt: str,
        negative: str | None,
    ) -> None:
        """The Remix form was sent: a strong variation with the edited prompt."""
        await variations.remix(self, interaction, parent_key, prompt=prompt, negative=negative)

    async def _again(
        self, interaction: discord.Interaction[Any], parent_key: str, *, kind: str, count: int
    ) -> None:
        async with AckGuard(interaction) as guard:
            parent = await db.get_generation(self.db, parent_key)
            if parent is None:
                raise UserError("I can't find that image any more.")
            await self.start_from(interaction, guard, parent, kind=kind, count=count)

    async def start_from(
        self,
        interaction: discord.Interaction[Any],
        guard: AckGuard,
        parent: db.Generation,
        *,
        kind: str,
        count: int = 1,
        text: tuple[str, str | None] | None = None,
        strength: float | None = None,
        init_image: bytes | None = None,
    ) -> None:
        """New jobs from a finished one (Reroll, Variations, Vary, Remix): the parent's
        request, or ``text`` (prompt, negative) in its place, with new seeds.

        Admitted by today's rules of the server where the button is clicked, not the
        original's: a prompt whose words were blocked since is refused like a new one."""
        prompt, negative = text if text is not None else (parent.prompt, parent.negative_prompt)
        admitted = await policy.admit(
            interaction,
            self.guilds,
            prompt=prompt,
            negative=negative,
            style=parent.style,
            aspect=parent.aspect,
        )
        await self._start(
            interaction,
            guard,
            admitted,
            aspect=parent.aspect,
            mode=Mode(parent.mode),
            seeds=[None] * count,
            kind=kind,
            parent_key=parent.job_key,
            strength=strength,
            init_image=init_image,
        )

    # ------------------------------------------------------------------ reserve → submit
    async def _start(
        self,
        interaction: discord.Interaction[Any],
        guard: AckGuard,
        admitted: Admitted,
        *,
        aspect: str,
        mode: Mode,
        seeds: list[int | None],
        kind: str,
        parent_key: str | None,
        strength: float | None = None,
        init_image: bytes | None = None,
    ) -> None:
        """Reserve and submit one job per seed, then post their status messages.

        A variation (``strength``) renders from ``init_image``, its parent's stored PNG."""
        planned: list[tuple[db.Generation, JobHandle]] = []
        shortfall: str | None = None
        for index, wanted_seed in enumerate(seeds, start=1):
            key = str(interaction.id) if len(seeds) == 1 else f"{interaction.id}:{index}"
            new = db.NewGeneration(
                job_key=key,
                user_id=interaction.user.id,
                channel_id=interaction.channel_id,
                guild_id=interaction.guild_id,
                prompt=admitted.prompt,
                style=admitted.style.name,
                aspect=aspect,
                mode=str(mode),
                negative_prompt=admitted.negative,
                seed=wanted_seed if wanted_seed is not None else secrets.randbelow(MAX_SEED + 1),
                kind=kind,
                parent_key=parent_key,
                strength=strength,
            )
            try:
                started = await self._reserve_and_submit(new, admitted, init_image)
            except UserError as refusal:
                if not planned:
                    raise
                shortfall = render.partial_variations_text(refusal.message)
                break
            if started is None:
                # A redelivered interaction: its job already exists and is followed elsewhere.
                logger.info("job %s was already reserved; ignoring the repeat", key)
                if not planned and not interaction.response.is_done():
                    await interaction.response.defer()
                break
            planned.append(started)
        for index, (row, handle) in enumerate(planned):
            await self._announce(interaction, guard, row, handle, first=index == 0)
        if shortfall is not None:
            await errors.send_ephemeral(interaction, shortfall)

    async def _reserve_and_submit(
        self, new: db.NewGeneration, admitted: Admitted, init_image: bytes | None = None
    ) -> tuple[db.Generation, JobHandle] | None:
        """Charge and write the row, then hand the job to the backend; None for a repeat."""
        try:
            row, fresh = await db.reserve_generation(
                self.db,
                new,
                daily_quota=admitted.daily_quota,
                max_queued=admitted.queue.limit,
                reset_hour=self.settings.quota_reset_hour,
                now=utcnow(),
            )
        except (db.QuotaExceeded, db.TooManyQueued) as exc:
            metrics.JOBS.labels("refused").inc()
            raise UserError(policy.refusal(exc, admitted.queue)) from None
        if not fresh:
            return None
        try:
            handle = await self.submit(row, admitted.style, init_image=init_image)
        except JobFailed as failure:
            await self.finish.end(row.job_key, Outcome.failed(failure, metric="refused"))
            raise UserError(failure.user_message) from None
        return row, handle

    async def submit(
        self, row: db.Generation, style: db.Style, *, init_image: bytes | None = None
    ) -> JobHandle:
        """Hand a job row to the backend (a new job, or one resumed after a restart).

        A variation resumed after a restart reads its parent's image from the store again;
        ``JobFailed`` when it is gone (the caller refunds the job and says so).
        """
        if row.strength is not None and init_image is None:
            init_image = await variations.parent_png(self.bot, row.parent_key)
        edit_images: tuple[bytes, ...] = ()
        if row.kind == db.GenerationKind.EDIT:
            edit_images = await edit.inputs_for(self.bot, row)
        request = request_for(
            row,
            style,
            deadline_s=self.settings.job_deadline_s,
            init_image=init_image,
            edit_images=edit_images,
        )
        return await self.backend.submit(request, self.follower.on_progress(row.job_key))

    async def _announce(
        self,
        interaction: discord.Interaction[Any],
        guard: AckGuard,
        row: db.Generation,
        handle: JobHandle,
        *,
        first: bool,
    ) -> None:
        """Post a job's status message (the answer itself, or a followup) and follow it."""
        key = row.job_key
        position = await self.follower.position(key)
        text = self.follower.queued_text(render.header_of(row), position)
        followup: discord.WebhookMessage | None = None
        try:
            if first:
                message_id = await guard.respond(text, views.status_view(key))
            else:
                followup = await interaction.followup.send(
                    text,
                    view=views.status_view(key),
                    allowed_mentions=errors.NO_MENTIONS,
                    wait=True,
                )
                message_id = followup.id
        except discord.HTTPException as exc:
            # Most likely the 3-second window passed (10062): nobody can see this job.
            logger.warning("could not post the status message of job %s: %s", key, exc)
            self.follower.drop_early(key)
            await self.backend.cancel(key)
            failure = JobFailed(FailureKind.ERROR, "Discord did not accept the reply in time.")
            await self.finish.end(key, Outcome.failed(failure))
            return
        await db.set_message(
            self.db,
            key,
            message_id=message_id,
            channel_id=interaction.channel_id,
            interaction_token=interaction.token,
        )
        created = interaction_time(str(interaction.id)) or utcnow()
        target = StatusMessage(
            self.bot,
            requester_id=row.user_id,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            message_id=message_id,
            interaction=interaction,
            followup=followup,
            token_expires_at=created + TOKEN_LIFETIME,
            upload_limit=interaction.filesize_limit,
        )
        job = follow_job(
            row,
            target=target,
            handle=handle,
            requested_at=guard.started,
            requester=interaction.user,
            position=position,
        )
        self.follower.follow(job, self.run, shown_text=text)

    # ------------------------------------------------------------------ the job's life
    async def run(self, job: Job) -> None:
        """Wait for the engine's answer, then deliver the image or tell the failure."""
        outcome = "failed"
        result: JobResult | None = None
        try:
            try:
                result = await job.handle.result()
            except JobFailed as failure:
                job.finishing = True
                await job.stop_progress()
                ending = Outcome.failed(failure, cancelled_by=job.cancelled_by)
                outcome = await self.finish.end_job(job, ending)
                return
            job.finishing = True
            outcome = await self.finish.deliver(job, result)
        except asyncio.CancelledError:
            # Shutting down: the row stays unfinished and the next start resumes it.
            outcome = "interrupted"
            if job.reporter is not None:
                job.reporter.abandon()
            raise
        except Exception:
            logger.exception("job %s crashed in the bot", job.key)
            failure = JobFailed(
                FailureKind.ERROR, "Something went wrong while delivering the image."
            )
            try:
                outcome = await self.finish.end_job(job, Outcome.failed(failure))
            except Exception:  # the database itself is failing; the next start resumes it
                logger.exception("job %s could not be ended either", job.key)
        finally:
            self.follower.release(job.key, line_moved=outcome != "interrupted")
            logger.info(
                "job %s kind=%s user=%s guild=%s outcome=%s queued_s=%.2f run_s=%.2f total_s=%.2f",
                job.key,
                job.kind,
                job.user_id,
                job.guild_id,
                outcome,
                result.queued_s if result else 0.0,
                result.run_s if result else 0.0,
                time.perf_counter() - job.requested_at,
            )

    # ------------------------------------------------------------------ the Cancel button
    async def cancel(self, interaction: discord.Interaction[Any], key: str) -> None:
        """Stop a waiting or rendering job (who may: ``views.CancelButton`` checks it)."""
        await cancelling.cancel(self, interaction, key)

    # ------------------------------------------------------------------ restarts
    async def recover(self) -> None:
        """Resume what a previous run left unfinished (see ``bot.imagine.recovery``)."""
        await recovery.recover(self)

    async def close(self) -> None:
        """Stop following jobs; their rows stay unfinished so the next start resumes them."""
        await self.follower.close()
