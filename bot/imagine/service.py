"""The job path: reserve → submit → answer → follow → finish.

Every entry point builds a ``JobSpec`` and calls ``start(guard, spec)``: /imagine, Reroll,
Variations, Vary, Remix (``bot.imagine.again``), /edit and the Edit form (``bot.edit``), and
any kind an extension adds. A job resumed after a restart joins at ``submit``, which reads the
job's inputs back from the image store by their keys exactly as for a fresh job. The Cancel
button is ``bot.imagine.cancelling``. Every ending (an image delivered, an engine failure, a
cancel, an upload Discord refused, a reply nobody saw, a job that cannot be resumed) goes
through ``Finisher.end`` (``bot.imagine.finish``), so recording, refunding, counting and
telling never drift apart.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import discord

import db
from bot import errors, metrics, render
from bot.delivery import TOKEN_LIFETIME, StatusMessage, interaction_time
from bot.errors import UserError
from bot.images import NotStored
from bot.imagine import cancelling, policy, recovery
from bot.imagine.ack import AckGuard
from bot.imagine.deps import JobDeps
from bot.imagine.finish import Finisher
from bot.imagine.following import Follower
from bot.imagine.job import Job, Outcome, follow_job, utcnow
from bot.imagine.kinds import JobKind, Kinds, UnknownKind
from bot.imagine.policy import Admitted, spec_of
from bot.imagine.presenting import ResultRenderer
from bot.imagine.spec import JobSpec, request_for
from bot.interaction import Interaction
from engine.contract import (
    TASK_GENERATE,
    FailureKind,
    JobFailed,
    JobHandle,
    JobResult,
)
from engine.presets import MAX_SEED

logger = logging.getLogger(__name__)

# How long a refusal may wait for the backend to say what it can run now.
STATUS_TIMEOUT_S = 5.0


class JobService:
    """Owns every job this bot process follows, and the kinds of job it runs."""

    def __init__(self, deps: JobDeps, kinds: Kinds | None = None) -> None:
        self.deps = deps
        self.client = deps.client
        self.settings = deps.settings
        self.db = deps.database
        self.backend = deps.backend
        self.images = deps.images
        self.guilds = deps.guilds
        self.views = deps.views
        self.kinds = kinds if kinds is not None else Kinds()
        self.finish = Finisher(deps)
        self.follower = Follower(
            deps.backend,
            deps.database,
            views=deps.views,
            interval_s=deps.settings.progress_interval_s,
        )

    def register(self, kind: JobKind, renderer: ResultRenderer) -> None:
        """Run jobs of ``kind`` (an extension's), shown by ``renderer``."""
        self.kinds.add(kind)
        self.views.add_renderer(kind.name, renderer)

    def active_keys(self) -> list[str]:
        return list(self.follower.jobs)

    def owners(self) -> dict[str, int]:
        """Requester of every job this process follows, by job key."""
        return self.follower.owners()

    # ------------------------------------------------------------------ the one way in
    async def start(self, guard: AckGuard, spec: JobSpec, *, copies: int = 1) -> None:
        """Check, charge, queue and answer ``copies`` jobs of ``spec`` (each its own seed);
        they then run on their own. Every refusal is a ``UserError`` with nothing charged.

        With several copies, each is reserved in turn; a limit reached partway keeps those
        already reserved and says why the rest were not made.
        """
        interaction = guard.interaction
        admitted = await self.admit(guard, spec)
        planned: list[tuple[db.Generation, JobHandle]] = []
        shortfall: str | None = None
        for index in range(1, copies + 1):
            key = str(interaction.id) if copies == 1 else f"{interaction.id}:{index}"
            try:
                started = await self._reserve_and_submit(key, interaction, admitted)
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
            await self._announce(guard, row, handle, first=index == 0)
        if shortfall is not None:
            await errors.send_ephemeral(interaction, shortfall)

    async def admit(self, guard: AckGuard, spec: JobSpec) -> Admitted:
        """Every check before anything is charged, in the order a member would fix them: a
        kind this bot runs, something here that runs its task now, the server's rules
        (``policy.server_rules``). Quota and queue are the reservation's, atomically."""
        try:
            kind = self.kinds[spec.kind]
        except UnknownKind:
            raise UserError(render.unknown_kind_text()) from None
        if kind.task != TASK_GENERATE:
            await self.check_task(kind.task)
        return await policy.server_rules(guard.interaction, self.guilds, spec)

    async def admit_early(self, guard: AckGuard, spec: JobSpec) -> None:
        """``admit`` and the member's quota and queue, for an entry point with slow work
        before ``start`` (a download): a refusal then comes before that work, not after it.
        ``start`` checks again; only the reservation decides."""
        admitted = await self.admit(guard, spec)
        await self.check_limits(guard.interaction, admitted)

    async def check_limits(self, interaction: Interaction, admitted: Admitted) -> None:
        """Refuse (nothing written) when the member has no quota left today or as many jobs
        waiting as they may: before any slow work an entry point does, such as downloading
        uploads. The reservation checks again, atomically; this only answers early."""
        guild_id, user_id = interaction.guild_id, interaction.user.id
        quota = await db.quota_status(
            self.db,
            guild_id=guild_id,
            user_id=user_id,
            daily_quota=admitted.daily_quota,
            reset_hour=self.settings.quota_reset_hour,
            now=utcnow(),
        )
        refusal: db.QuotaExceeded | db.TooManyQueued | None = None
        if quota.limit is not None and quota.remaining is not None and quota.remaining < 1:
            refusal = db.QuotaExceeded(quota.used, quota.limit, quota.resets_at)
        elif admitted.queue.limit is not None:
            active = await db.count_active(self.db, guild_id=guild_id, user_id=user_id)
            if active >= admitted.queue.limit:
                refusal = db.TooManyQueued(active, admitted.queue.limit)
        if refusal is not None:
            metrics.JOBS.labels("refused").inc()
            raise UserError(policy.refusal(refusal, admitted.queue))

    async def check_task(self, task: str) -> None:
        """Refuse at once (a ``UserError``) when nothing here can run ``task`` now, before
        anything is charged or a member fills in a form for nothing."""
        try:
            status = await asyncio.wait_for(self.backend.status(), STATUS_TIMEOUT_S)
        except Exception as exc:
            logger.warning("a %s job refused: the backend's status failed (%s)", task, exc)
            raise UserError(render.ENGINE_SILENT_TEXT) from None
        if task not in status.capabilities:
            raise UserError(render.task_unavailable_text(task, status))

    async def _reserve_and_submit(
        self, key: str, interaction: Interaction, admitted: Admitted
    ) -> tuple[db.Generation, JobHandle] | None:
        """Charge and write the row, then hand the job to the backend; None for a repeat."""
        spec = admitted.spec
        seed = spec.seed if spec.seed is not None else secrets.randbelow(MAX_SEED + 1)
        new = spec.new_row(
            job_key=key,
            user_id=interaction.user.id,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            seed=seed,
        )
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
            handle = await self.submit(row, admitted.style)
        except JobFailed as failure:
            await self.finish.end(row.job_key, Outcome.failed(failure, metric="refused"))
            raise UserError(failure.user_message) from None
        return row, handle

    async def submit(self, row: db.Generation, style: db.Style) -> JobHandle:
        """Hand a job row to the backend (a new job, or one resumed after a restart).

        The job's inputs are read from the image store by their keys; ``JobFailed`` when one
        is gone (the caller refunds the job and says so), or when the row's kind is not one
        this bot runs.
        """
        spec = JobSpec.of_row(row)
        try:
            kind = self.kinds[spec.kind]
        except UnknownKind:
            raise JobFailed(FailureKind.INVALID, render.unknown_kind_reason()) from None
        images = []
        for key in spec.inputs:
            try:
                images.append(await self.images.read(key))
            except NotStored:
                raise JobFailed(FailureKind.ERROR, render.inputs_gone_reason()) from None
        request = request_for(
            spec,
            job_key=row.job_key,
            user_id=row.user_id,
            task=kind.task,
            style=spec_of(style),
            images=tuple(images),
            deadline_s=self.settings.job_deadline_s,
        )
        return await self.backend.submit(request, self.follower.on_progress(row.job_key))

    async def _announce(
        self, guard: AckGuard, row: db.Generation, handle: JobHandle, *, first: bool
    ) -> None:
        """Post a job's status message (the answer itself, or a followup) and follow it."""
        interaction = guard.interaction
        key = row.job_key
        position = await self.follower.position(key)
        text = self.follower.queued_text(render.header_of(row), position)
        followup: discord.WebhookMessage | None = None
        try:
            if first:
                message_id = await guard.respond(text, self.views.status_view(key))
            else:
                followup = await interaction.followup.send(
                    text,
                    view=self.views.status_view(key),
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
            self.client,
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
            crashed = JobFailed(
                FailureKind.ERROR, "Something went wrong while delivering the image."
            )
            try:
                outcome = await self.finish.end_job(job, Outcome.failed(crashed))
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
    async def cancel(self, interaction: Interaction, key: str) -> None:
        """Stop a waiting or rendering job (who may: ``views.CancelButton`` checks it)."""
        await cancelling.cancel(self, interaction, key)

    # ------------------------------------------------------------------ restarts
    async def recover(self) -> None:
        """Resume what a previous run left unfinished (see ``bot.imagine.recovery``)."""
        await recovery.recover(self)

    async def close(self) -> None:
        """Stop following jobs; their rows stay unfinished so the next start resumes them."""
        await self.follower.close()
