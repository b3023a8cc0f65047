"""The /imagine data flow, from a validated request to the delivered image.

validate → reserve (quota and job row in one transaction, the interaction id as the key) →
submit to the image backend → answer within Discord's 3 seconds with the status message →
throttled progress edits → final image with its buttons → ``complete_generation``; on any
failure ``fail_generation`` refunds the quota unit and the message says what went wrong.

The commands and buttons only call into this service; it is the one place that knows how a job
travels, so /imagine, Reroll, Variations and restart recovery cannot drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import datetime as dt
import io
import logging
import re
import secrets
import time
import unicodedata
from typing import TYPE_CHECKING, Any

import discord

import db
from bot import errors, metrics, render, views
from bot.delivery import (
    TOKEN_LIFETIME,
    MessageGone,
    StatusMessage,
    fit_to_limit,
    interaction_time,
)
from bot.errors import UserError
from bot.progress import ProgressReporter
from engine.contract import (
    FailureKind,
    JobFailed,
    JobHandle,
    JobRequest,
    JobResult,
    Mode,
    Progress,
    StyleSpec,
)
from engine.presets import ASPECTS, DEFAULT_STYLE, MAX_PROMPT_CHARS, MAX_SEED

if TYPE_CHECKING:
    from bot.app import ImagineBot

logger = logging.getLogger(__name__)

VARIATION_COUNT = 2
# At shutdown, how long a job that is already delivering (or reporting its failure) may take to
# finish: cutting it off mid-upload would leave the row unfinished, and the next start would
# render and post the same image again.
FINISH_GRACE_S = 20.0
# Limits and styles change only through admin commands of this process, which drop the cache;
# the TTL covers edits made straight in the database.
CACHE_TTL_S = 60.0
# Discord allows 3 s to acknowledge an interaction; past this, the bot defers (see AckGuard).
ACK_DEFER_AFTER_S = 2.0


def utcnow() -> dt.datetime:
    """Discord's notion of now (quota days, token ages) in one place."""
    return discord.utils.utcnow()


@dataclasses.dataclass(frozen=True, slots=True)
class ImagineParams:
    """What a member asked for, before validation."""

    prompt: str
    style: str | None = None
    aspect: str = "1:1"
    negative: str | None = None
    seed: int | None = None
    mode: Mode = Mode.STANDARD


@dataclasses.dataclass(eq=False)
class Job:
    """A job this process is following: its handle, its message and its progress."""

    key: str
    kind: str
    user_id: int
    guild_id: int | None
    header: str
    target: StatusMessage
    handle: JobHandle
    context: contextvars.Context
    requested_at: float
    requester: discord.abc.User | None = None
    negative: str | None = None
    reporter: ProgressReporter | None = None
    progress: Progress | None = None
    running: bool = False
    cancelled_by: int | None = None
    position: int | None = None
    finishing: bool = False  # the engine answered; delivery or the failure notice is under way
    task: asyncio.Task[None] | None = None


class AckGuard:
    """Makes sure an interaction is acknowledged within Discord's 3 seconds, however busy.

    Normally the public status message *is* the acknowledgement and refusals are ephemeral
    answers. If validation and the quota transaction have not finished after ``after_s``
    (a database under heavy load), the guard defers publicly ("thinking…") so the interaction
    cannot expire; the status message then replaces the thinking message, and a refusal
    deletes it and answers privately instead.
    """

    def __init__(self, interaction: discord.Interaction[Any], *, after_s: float) -> None:
        self.interaction = interaction
        self.after_s = after_s
        self.started = time.perf_counter()
        self.deferred = False
        self._lock = asyncio.Lock()
        self._watchdog: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AckGuard:
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self._watchdog is not None and not self._watchdog.done():
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self.deferred and isinstance(exc, UserError):
            # The refusal goes out privately; the public "thinking…" must not linger. Completing
            # the deferred message first makes the refusal a separate (ephemeral) followup
            # instead of the edit of the public "thinking…" that a first followup would be.
            with contextlib.suppress(discord.HTTPException):
                await self.interaction.edit_original_response(content="Request not accepted.")
                await self.interaction.delete_original_response()

    async def _watch(self) -> None:
        await asyncio.sleep(self.after_s)
        async with self._lock:
            if self.interaction.response.is_done():
                return
            logger.warning(
                "interaction %s not answered after %.1f s; deferring",
                self.interaction.id,
                self.after_s,
            )
            await self.interaction.response.defer(thinking=True)
            self.deferred = True
            metrics.ACK_LATENCY.observe(time.perf_counter() - self.started)

    async def respond(self, content: str, view: discord.ui.View) -> int | None:
        """Post the status message as the answer; returns its id."""
        async with self._lock:
            if self._watchdog is not None and not self._watchdog.done():
                self._watchdog.cancel()
            if self.deferred:
                message = await self.interaction.edit_original_response(
                    content=content, view=view, allowed_mentions=errors.NO_MENTIONS
                )
                return message.id
            callback = await self.interaction.response.send_message(
                content, view=view, allowed_mentions=errors.NO_MENTIONS
            )
            metrics.ACK_LATENCY.observe(time.perf_counter() - self.started)
            return callback.message_id


def _blocked_pattern(word: str) -> re.Pattern[str]:
    # Whole words only, so blocking "ass" does not refuse "class"; phrases match as a whole.
    return re.compile(rf"(?<!\w){re.escape(word.casefold())}(?!\w)")


def find_blocked(text: str, words: tuple[str, ...]) -> str | None:
    folded = text.casefold()
    for word in words:
        if word and _blocked_pattern(word).search(folded):
            return word
    return None


def style_description(spec: StyleSpec) -> str:
    """A one-line description of a built-in style from its template."""
    text = spec.template.replace("{prompt}, ", "").replace("{prompt}", "").strip(" ,")
    return render.clip(text or "no styling: your prompt as written", 100)


class JobService:
    """Owns every job this bot process follows."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.settings = bot.settings
        self._jobs: dict[str, Job] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._configs: dict[int | None, tuple[float, db.GuildConfig]] = {}
        self._styles: dict[int | None, tuple[float, list[db.Style]]] = {}
        # Progress that arrived before the job's status message existed.
        self._early_progress: dict[str, Progress] = {}
        self._closing = False

    # ------------------------------------------------------------------ helpers
    @property
    def db(self) -> db.Database:
        assert self.bot.db is not None
        return self.bot.db

    @property
    def backend(self) -> Any:
        return self.bot.backend

    def active_keys(self) -> list[str]:
        return list(self._jobs)

    def owners(self) -> dict[str, int]:
        """Requester of every job this process follows, by job key."""
        return {key: job.user_id for key, job in self._jobs.items()}

    def _spawn(self, coro: Any, *, context: contextvars.Context | None = None) -> asyncio.Task[Any]:
        loop = asyncio.get_running_loop()
        task = (
            loop.create_task(coro, context=context)
            if context is not None
            else loop.create_task(coro)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def guild_config(self, guild_id: int | None) -> db.GuildConfig:
        """The guild's limits, cached: /imagine must answer within 3 s even under load."""
        cached = self._configs.get(guild_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        config = await db.get_guild_config(
            self.db,
            guild_id,
            default_quota=self.settings.default_daily_quota,
            default_max_queued=self.settings.default_max_queued,
        )
        self._configs[guild_id] = (time.monotonic() + CACHE_TTL_S, config)
        return config

    async def styles(self, guild_id: int | None) -> list[db.Style]:
        """The styles members can pick here (guild's own + built-ins), cached like the limits;
        autocomplete asks on every keystroke."""
        cached = self._styles.get(guild_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        styles = await db.list_styles(self.db, guild_id)
        self._styles[guild_id] = (time.monotonic() + CACHE_TTL_S, styles)
        return styles

    def forget(self, guild_id: int | None) -> None:
        """Drop cached limits and styles after an admin changed them."""
        self._configs.pop(guild_id, None)
        self._styles.pop(guild_id, None)

    @staticmethod
    def is_exempt(user: discord.abc.User, config: db.GuildConfig) -> bool:
        roles = getattr(user, "roles", None)
        if not roles or not config.exempt_roles:
            return False
        exempt = set(config.exempt_roles)
        return any(role.id in exempt for role in roles)

    async def check_place(
        self, interaction: discord.Interaction[Any], config: db.GuildConfig
    ) -> None:
        """Refuse DMs (when configured) and channels outside the guild's allowed list."""
        if interaction.guild_id is None:
            if not self.settings.allow_dms:
                raise UserError(
                    "I only make images in servers, not in direct messages. "
                    "Use `/imagine` in a server we share."
                )
            return
        allowed = set(config.allowed_channels)
        if not allowed:
            return
        channel = interaction.channel
        ids = {interaction.channel_id}
        parent_id = getattr(channel, "parent_id", None)
        if parent_id is not None:
            ids.add(parent_id)
        if ids & allowed:
            return
        where = ", ".join(f"<#{cid}>" for cid in sorted(allowed)[:10])
        raise UserError(f"Images can't be made in this channel. Try {where}.")

    @staticmethod
    def check_prompt(
        prompt: str, negative: str | None, config: db.GuildConfig
    ) -> tuple[str, str | None]:
        cleaned = prompt.strip()
        # Zero-width and other format characters (category Cf) are invisible: a prompt made
        # only of them is as empty as one made of spaces.
        if not "".join(c for c in cleaned if unicodedata.category(c) != "Cf").strip():
            raise UserError(
                "Your prompt is empty. Describe the image you want, e.g. `a red fox in the snow`."
            )
        if len(cleaned) > MAX_PROMPT_CHARS:
            raise UserError(
                f"Your prompt is {len(cleaned):,} characters long; "
                f"the limit is {MAX_PROMPT_CHARS:,}. Please shorten it."
            )
        neg = negative.strip() if negative else None
        if neg and len(neg) > MAX_PROMPT_CHARS:
            raise UserError(
                f"Your negative prompt is {len(neg):,} characters long; "
                f"the limit is {MAX_PROMPT_CHARS:,}."
            )
        for text in (cleaned, neg or ""):
            word = find_blocked(text, config.blocked_words)
            if word is not None:
                raise UserError(
                    "Your prompt contains a word this server doesn't allow: "
                    f"||{render.shown(word, 100)}||. Please rephrase it."
                )
        return cleaned, neg or None

    async def resolve_style(self, guild_id: int | None, name: str | None) -> db.Style:
        wanted = (name or DEFAULT_STYLE).strip() or DEFAULT_STYLE
        key = db.style_key(wanted)
        style = next((s for s in await self.styles(guild_id) if s.name_key == key), None)
        if style is None:
            raise UserError(
                f"There is no style called “{render.shown(wanted, 64)}” here. "
                "Start typing in the `style` option to see the list."
            )
        return style

    @staticmethod
    def spec_of(style: db.Style) -> StyleSpec:
        return StyleSpec(name=style.name, template=style.template, negative=style.negative or "")

    # ------------------------------------------------------------------ entry points
    async def imagine(self, interaction: discord.Interaction[Any], params: ImagineParams) -> None:
        """/imagine: validate, charge, queue and answer; the job then runs on its own."""
        async with AckGuard(interaction, after_s=ACK_DEFER_AFTER_S) as guard:
            await self._imagine(interaction, params, guard)

    async def _imagine(
        self, interaction: discord.Interaction[Any], params: ImagineParams, guard: AckGuard
    ) -> None:
        config = await self.guild_config(interaction.guild_id)
        await self.check_place(interaction, config)
        prompt, negative = self.check_prompt(params.prompt, params.negative, config)
        if params.aspect not in ASPECTS:
            raise UserError("Unknown aspect ratio: pick one from the list.")
        if params.seed is not None and not 0 <= params.seed <= MAX_SEED:
            raise UserError(f"The seed must be between 0 and {MAX_SEED}.")
        style = await self.resolve_style(interaction.guild_id, params.style)
        await self._start(
            interaction,
            config,
            prompt=prompt,
            negative=negative,
            style=style,
            aspect=params.aspect,
            mode=Mode(params.mode),
            seeds=[params.seed],
            kind=db.GenerationKind.IMAGINE,
            parent_key=None,
            guard=guard,
        )

    async def reroll(self, interaction: discord.Interaction[Any], parent_key: str) -> None:
        """Same parameters, new seed: a new generation charged to whoever clicked."""
        await self._again(interaction, parent_key, kind=db.GenerationKind.REROLL, count=1)

    async def variations(self, interaction: discord.Interaction[Any], parent_key: str) -> None:
        """Two more seeds of the same prompt: two new generations."""
        await self._again(
            interaction, parent_key, kind=db.GenerationKind.VARIATION, count=VARIATION_COUNT
        )

    async def _again(
        self, interaction: discord.Interaction[Any], parent_key: str, *, kind: str, count: int
    ) -> None:
        async with AckGuard(interaction, after_s=ACK_DEFER_AFTER_S) as guard:
            await self._again_guarded(interaction, parent_key, kind=kind, count=count, guard=guard)

    async def _again_guarded(
        self,
        interaction: discord.Interaction[Any],
        parent_key: str,
        *,
        kind: str,
        count: int,
        guard: AckGuard,
    ) -> None:
        parent = await db.get_generation(self.db, parent_key)
        if parent is None:
            raise UserError("I can't find that image any more.")
        config = await self.guild_config(interaction.guild_id)
        await self.check_place(interaction, config)
        prompt, negative = self.check_prompt(parent.prompt, parent.negative_prompt, config)
        style = await self.resolve_style(interaction.guild_id, parent.style)
        await self._start(
            interaction,
            config,
            prompt=prompt,
            negative=negative,
            style=style,
            aspect=parent.aspect,
            mode=Mode(parent.mode),
            seeds=[None] * count,
            kind=kind,
            parent_key=parent.job_key,
            guard=guard,
        )

    async def _start(
        self,
        interaction: discord.Interaction[Any],
        config: db.GuildConfig,
        *,
        prompt: str,
        negative: str | None,
        style: db.Style,
        aspect: str,
        mode: Mode,
        seeds: list[int | None],
        kind: str,
        parent_key: str | None,
        guard: AckGuard,
    ) -> None:
        user = interaction.user
        quota = None if self.is_exempt(user, config) else config.daily_quota
        spec = self.spec_of(style)
        planned: list[tuple[str, int, JobHandle]] = []
        shortfall: str | None = None
        for index, wanted_seed in enumerate(seeds, start=1):
            key = str(interaction.id) if len(seeds) == 1 else f"{interaction.id}:{index}"
            seed = wanted_seed if wanted_seed is not None else secrets.randbelow(MAX_SEED + 1)
            new = db.NewGeneration(
                job_key=key,
                user_id=user.id,
                channel_id=interaction.channel_id,
                guild_id=interaction.guild_id,
                prompt=prompt,
                style=style.name,
                aspect=aspect,
                mode=str(mode),
                negative_prompt=negative,
                seed=seed,
                kind=kind,
                parent_key=parent_key,
            )
            try:
                row, fresh = await db.reserve_generation(
                    self.db,
                    new,
                    daily_quota=quota,
                    max_queued=config.max_queued,
                    reset_hour=self.settings.quota_reset_hour,
                    now=utcnow(),
                )
            except db.QuotaExceeded as exc:
                metrics.JOBS.labels("refused").inc()
                text = (
                    f"You've used all {exc.limit} images of today's quota. "
                    f"It resets {render.reset_time(exc.resets_at)}."
                )
                if not planned:
                    raise UserError(text) from None
                shortfall = "Only one variation was started: " + text
                break
            except db.TooManyQueued as exc:
                metrics.JOBS.labels("refused").inc()
                plural = "s" if exc.queued != 1 else ""
                text = (
                    f"You already have {exc.queued} image{plural} waiting or being made "
                    f"(the limit is {exc.limit}). Wait for one to finish, then try again."
                )
                if not planned:
                    raise UserError(text) from None
                shortfall = "Only one variation was started: " + text
                break
            if not fresh:
                # A redelivered interaction: its job already exists and is followed elsewhere.
                logger.info("job %s was already reserved; ignoring the repeat", key)
                if not planned:
                    if not interaction.response.is_done():
                        await interaction.response.defer()
                    return
                break
            request = JobRequest(
                job_id=key,
                user_id=user.id,
                prompt=prompt,
                style=spec,
                negative_prompt=negative,
                aspect=aspect,
                seed=row.seed if row.seed is not None else seed,
                mode=mode,
                deadline_s=self.settings.job_deadline_s,
            )
            try:
                handle = await self.backend.submit(request, self._progress_callback(key))
            except JobFailed as failure:
                await db.fail_generation(
                    self.db, key, status="failed", error=failure.user_message, now=utcnow()
                )
                metrics.JOBS.labels("refused").inc()
                if not planned:
                    raise UserError(failure.user_message) from None
                shortfall = "Only one variation was started: " + failure.user_message
                break
            planned.append((key, request.seed or 0, handle))

        for index, (key, seed, handle) in enumerate(planned):
            position = await self._position(key)
            header = render.job_header(user.id, prompt, style.name, aspect, str(mode), seed)
            text = f"{header}\n{render.queued_line(position)}"
            try:
                if index == 0:
                    message_id = await guard.respond(text, views.status_view(key))
                    followup = None
                else:
                    message = await interaction.followup.send(
                        text,
                        view=views.status_view(key),
                        allowed_mentions=errors.NO_MENTIONS,
                        wait=True,
                    )
                    message_id = message.id
                    followup = message
            except discord.HTTPException as exc:
                # Most likely the 3-second window passed (10062): nobody can see this job.
                logger.warning("could not post the status message of job %s: %s", key, exc)
                self._early_progress.pop(key, None)
                await self.backend.cancel(key)
                await db.fail_generation(
                    self.db,
                    key,
                    status="failed",
                    error="Discord did not accept the reply in time.",
                    now=utcnow(),
                )
                metrics.JOBS.labels("failed").inc()
                continue
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
                requester_id=user.id,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
                message_id=message_id,
                interaction=interaction,
                followup=followup,
                token_expires_at=created + TOKEN_LIFETIME,
                upload_limit=interaction.filesize_limit,
            )
            job = Job(
                key=key,
                kind=kind,
                user_id=user.id,
                guild_id=interaction.guild_id,
                header=header,
                target=target,
                handle=handle,
                context=contextvars.copy_context(),
                requested_at=guard.started,
                requester=user,
                negative=negative,
                position=position,
            )
            self._follow(job, shown_text=text)
        if shortfall is not None:
            await errors.send_ephemeral(interaction, shortfall)

    async def _position(self, key: str) -> int | None:
        try:
            return await self.backend.position(key)
        except Exception as exc:  # a position is a nicety; never fail a job for it
            logger.debug("position of %s unavailable: %s", key, exc)
            return None

    # ------------------------------------------------------------------ following a job
    def _progress_callback(self, key: str) -> Any:
        def on_progress(progress: Progress) -> None:
            job = self._jobs.get(key)
            if job is None:
                self._early_progress[key] = progress
                return
            job.progress = progress
            if not job.running:
                job.running = True
                self._spawn(self._mark_running(key), context=job.context)
            if job.reporter is not None:
                job.reporter.update(f"{job.header}\n{render.progress_line(progress)}")

        return on_progress

    async def _mark_running(self, key: str) -> None:
        try:
            await db.mark_running(self.db, key, now=utcnow())
        except Exception:
            logger.exception("could not mark job %s running", key)
        await self._refresh_positions()

    def _follow(self, job: Job, *, shown_text: str | None = None) -> None:
        async def edit(text: str) -> None:
            await job.target.edit(content=text, view=views.status_view(job.key))

        job.reporter = ProgressReporter(
            edit, interval=self.settings.progress_interval_s, label=job.key
        )
        if shown_text is not None:
            job.reporter.mark_shown(shown_text)
        self._jobs[job.key] = job
        early = self._early_progress.pop(job.key, None)
        if early is not None:
            self._progress_callback(job.key)(early)
        metrics.QUEUE_DEPTH.set(len(self._jobs))
        job.task = self._spawn(self._run(job), context=job.context)

    async def _run(self, job: Job) -> None:
        outcome = "failed"
        result: JobResult | None = None
        try:
            try:
                result = await job.handle.result()
            except JobFailed as failure:
                job.finishing = True
                outcome = await self._fail(job, failure)
                return
            job.finishing = True
            outcome = await self._deliver(job, result)
        except asyncio.CancelledError:
            # Shutting down: the row stays queued/running and the next start resumes it.
            outcome = "interrupted"
            if job.reporter is not None:
                job.reporter.abandon()
            raise
        except Exception:
            logger.exception("job %s crashed in the bot", job.key)
            try:
                outcome = await self._fail(
                    job,
                    JobFailed(
                        FailureKind.ERROR, "Something went wrong while delivering the image."
                    ),
                )
            except Exception:  # the database itself is failing; the next start resumes it
                logger.exception("job %s could not be ended either", job.key)
        finally:
            self._jobs.pop(job.key, None)
            self._early_progress.pop(job.key, None)
            metrics.QUEUE_DEPTH.set(len(self._jobs))
            total = time.perf_counter() - job.requested_at
            logger.info(
                "job %s kind=%s user=%s guild=%s outcome=%s queued_s=%.2f run_s=%.2f total_s=%.2f",
                job.key,
                job.kind,
                job.user_id,
                job.guild_id,
                outcome,
                result.queued_s if result else 0.0,
                result.run_s if result else 0.0,
                total,
            )
            if outcome != "interrupted" and not self._closing:
                self._spawn(self._refresh_positions())

    async def _refresh_positions(self) -> None:
        """Tell waiting members their new place in line when the line moves."""
        for job in list(self._jobs.values()):
            if job.running or job.reporter is None or job.reporter.closed:
                continue
            position = await self._position(job.key)
            if position is None or position == job.position:
                continue
            previous, job.position = job.position, position
            # Near the front every step counts; far back, only every tenth place is worth an
            # edit: a long line must not spend Discord's rate limit on "position 143".
            if position <= 10 or previous is None or position // 10 != previous // 10:
                job.reporter.update(f"{job.header}\n{render.queued_line(position)}")

    async def _fail(self, job: Job, failure: JobFailed) -> str:
        if job.reporter is not None:
            await job.reporter.close()
        cancelled = failure.kind == FailureKind.CANCELLED
        status = db.GenerationStatus.CANCELLED if cancelled else db.GenerationStatus.FAILED
        row = await db.fail_generation(
            self.db, job.key, status=status, error=failure.user_message, now=utcnow()
        )
        if row.status == db.GenerationStatus.DONE:
            return "done"  # delivered by someone else; never overwrite an image with an error
        outcome = str(row.status)
        metrics.JOBS.labels(outcome).inc()
        if cancelled:
            text = render.cancelled_text(job.header, job.cancelled_by, job.user_id, refunded=True)
        else:
            text = render.failure_text(
                job.header, failure.kind, failure.user_message, refunded=True
            )
        try:
            await job.target.edit(content=text, embed=None, attachments=[], view=None)
        except (discord.HTTPException, MessageGone) as exc:
            logger.warning("could not show the failure of job %s: %s", job.key, exc)
        return outcome

    async def _deliver(self, job: Job, result: JobResult) -> str:
        if job.reporter is not None:
            await job.reporter.close()
        row = await db.get_generation(self.db, job.key)
        if row is None or row.finished:
            # Exactly once: a finished row was delivered (or ended) already.
            logger.info(
                "job %s already %s; not posting it again", job.key, row.status if row else "gone"
            )
            return str(row.status) if row else "gone"
        stem = f"imagine-{result.seed}"
        requester = job.requester or self.bot.get_user(job.user_id)
        if requester is None:  # a job resumed after a restart: only its id is known
            with contextlib.suppress(discord.HTTPException):
                requester = await self.bot.fetch_user(job.user_id)

        async def make_file(limit: int) -> tuple[discord.File, str | None]:
            data, filename, note = await asyncio.to_thread(fit_to_limit, result.png, limit, stem)
            return discord.File(io.BytesIO(data), filename=filename), note

        def embed_for(filename: str, note: str | None) -> discord.Embed:
            return render.result_embed(
                result,
                requester=requester,
                requester_id=job.user_id,
                filename=filename,
                conversion_note=note,
                negative_prompt=job.negative,
            )

        done_text = f"{job.header}\n✅ Done: the image is in the reply below."
        try:
            message_id = await job.target.deliver(
                make_file=make_file,
                embed_for=embed_for,
                view=views.result_view(job.key),
                done_text=done_text,
            )
        except (discord.HTTPException, MessageGone) as exc:
            logger.error("job %s: the image could not be delivered: %s", job.key, exc)
            await db.fail_generation(
                self.db,
                job.key,
                status="failed",
                error=f"could not deliver the image: {exc}",
                now=utcnow(),
            )
            metrics.JOBS.labels("failed").inc()
            text = render.failure_text(
                job.header,
                FailureKind.ERROR,
                "Discord did not accept the finished image here",
                refunded=True,
            )
            with contextlib.suppress(discord.HTTPException, MessageGone):
                await job.target.edit(content=text, embed=None, attachments=[], view=None)
            return "undeliverable"
        await db.complete_generation(
            self.db,
            job.key,
            seed=result.seed,
            width=result.width,
            height=result.height,
            steps=result.steps,
            true_cfg_scale=result.true_cfg_scale,
            mode_used=str(result.mode),
            model=result.model,
            queued_s=result.queued_s,
            run_s=result.run_s,
            message_id=message_id,
            worker=result.worker,
            note=result.note,
            now=utcnow(),
        )
        metrics.JOBS.labels("done").inc()
        metrics.SECONDS_PER_IMAGE.observe(result.run_s)
        if result.steps:
            metrics.SECONDS_PER_STEP.observe(result.run_s / result.steps)
        return "done"

    # ------------------------------------------------------------------ buttons
    def _can_moderate(self, interaction: discord.Interaction[Any], permission: str) -> bool:
        if interaction.guild_id is None:
            return False
        return bool(getattr(interaction.permissions, permission, False))

    async def _row(self, key: str) -> db.Generation:
        row = await db.get_generation(self.db, key)
        if row is None:
            raise UserError("I can't find that image any more.")
        return row

    async def details(self, interaction: discord.Interaction[Any], key: str) -> None:
        row = await self._row(key)
        await errors.send_ephemeral(interaction, embed=render.details_embed(row))

    async def delete(self, interaction: discord.Interaction[Any], key: str) -> None:
        row = await self._row(key)
        if interaction.user.id != row.user_id and not self._can_moderate(
            interaction, "manage_messages"
        ):
            raise UserError(
                "Only the person who asked for this image or a moderator can delete it."
            )
        await interaction.response.defer()
        try:
            await interaction.delete_original_response()
        except discord.HTTPException:
            if interaction.message is None:
                raise
            await interaction.message.delete()
        await db.set_message(self.db, key, message_id=None)
        logger.info("job %s: image deleted by user %s", key, interaction.user.id)

    async def cancel(self, interaction: discord.Interaction[Any], key: str) -> None:
        row = await self._row(key)
        if interaction.user.id != row.user_id and not self._can_moderate(
            interaction, "manage_guild"
        ):
            raise UserError(
                "Only the person who asked for this image or a server admin can cancel it."
            )
        if row.finished:
            raise UserError("This generation has already finished.")
        job = self._jobs.get(key)
        if job is None:
            # Nobody in this process follows the job (the backend lost it, or it was never
            # resumed): make sure the backend drops it, then end it here.
            await self.backend.cancel(key)
            row = await db.fail_generation(
                self.db, key, status="cancelled", error="Cancelled.", now=utcnow()
            )
            if row.status == db.GenerationStatus.DONE:
                raise UserError("It's too late to cancel: the image was already delivered.")
            header = render.job_header(
                row.user_id, row.prompt, row.style, row.aspect, row.mode, row.seed
            )
            await interaction.response.edit_message(
                content=render.cancelled_text(
                    header, interaction.user.id, row.user_id, refunded=True
                ),
                view=None,
                allowed_mentions=errors.NO_MENTIONS,
            )
            metrics.JOBS.labels("cancelled").inc()
            return
        job.cancelled_by = interaction.user.id
        if not await self.backend.cancel(key):
            raise UserError("It's too late to cancel: the image is being delivered.")
        await errors.send_ephemeral(
            interaction, "Cancelled. It won't count against the daily quota."
        )

    # ------------------------------------------------------------------ restart recovery
    async def recover(self) -> None:
        """Resume jobs a previous run left queued or running, or end them with a refund."""
        try:
            forgotten = await db.forget_expired_tokens(self.db, now=utcnow())
            if forgotten:
                logger.debug("dropped %d expired interaction tokens", forgotten)
            rows = await db.unfinished_generations(self.db)
        except Exception:
            logger.exception("could not read unfinished jobs")
            return
        if rows:
            logger.info("resuming %d unfinished job(s) from the last run", len(rows))
        for row in rows:
            if row.job_key in self._jobs:
                continue
            try:
                await self._resume(row)
            except Exception:
                logger.exception("could not resume job %s", row.job_key)

    async def _resume(self, row: db.Generation) -> None:
        delivered = await self._find_delivered(row)
        if delivered is not None:
            # The last run posted the image, then died before writing that down: record it
            # from the message itself instead of rendering and posting it a second time.
            await db.complete_generation(self.db, row.job_key, **delivered_fields(delivered, row))
            metrics.JOBS.labels("done").inc()
            logger.info(
                "job %s was delivered before the restart (message %s)", row.job_key, delivered.id
            )
            return
        target = StatusMessage.from_row(self.bot, row)
        header = render.job_header(
            row.user_id, row.prompt, row.style, row.aspect, row.mode, row.seed
        )
        style = await db.get_style(self.db, row.guild_id, row.style)
        failure: JobFailed | None = None
        handle: JobHandle | None = None
        if style is None:
            failure = JobFailed(
                FailureKind.INVALID, f"The style “{row.style}” was removed while the bot restarted."
            )
        elif row.message_id is None:
            failure = JobFailed(
                FailureKind.UNAVAILABLE, "The bot restarted before the job was announced."
            )
        else:
            request = JobRequest(
                job_id=row.job_key,
                user_id=row.user_id,
                prompt=row.prompt,
                style=self.spec_of(style),
                negative_prompt=row.negative_prompt,
                aspect=row.aspect,
                seed=row.seed,
                mode=Mode(row.mode),
                deadline_s=self.settings.job_deadline_s,
            )
            try:
                handle = await self.backend.submit(request, self._progress_callback(row.job_key))
            except JobFailed as exc:
                failure = exc
        if failure is not None or handle is None:
            failure = failure or JobFailed(FailureKind.UNAVAILABLE, "The job could not be resumed.")
            await db.fail_generation(
                self.db, row.job_key, status="failed", error=failure.user_message, now=utcnow()
            )
            metrics.JOBS.labels("failed").inc()
            text = render.failure_text(
                header,
                failure.kind,
                f"It could not be resumed after a restart: {failure.user_message}",
                refunded=True,
            )
            try:
                await target.edit(content=text, embed=None, attachments=[], view=None)
            except (discord.HTTPException, MessageGone) as exc:
                logger.info(
                    "could not tell job %s's message about the restart: %s", row.job_key, exc
                )
            logger.info("job %s could not be resumed: %s", row.job_key, failure.user_message)
            return
        job = Job(
            key=row.job_key,
            kind=row.kind,
            user_id=row.user_id,
            guild_id=row.guild_id,
            header=header,
            target=target,
            handle=handle,
            context=contextvars.copy_context(),
            requested_at=time.perf_counter(),
            negative=row.negative_prompt,
        )
        position = await self._position(row.job_key)
        job.position = position
        self._follow(job)
        assert job.reporter is not None
        job.reporter.update(f"{header}\n♻️ Resumed after a restart. {render.queued_line(position)}")
        logger.info("job %s resumed after a restart", row.job_key)

    async def _find_delivered(self, row: db.Generation) -> discord.Message | None:
        """The message that already carries this job's image, if the last run posted one.

        The image replaces the status message, or (late delivery) goes out as a reply right
        after it; either way it carries this job's Reroll button. Without permission to read
        the channel the answer is "unknown", and the job is rendered again.
        """
        if row.channel_id is None or row.message_id is None:
            return None
        channel = self.bot.get_partial_messageable(row.channel_id, guild_id=row.guild_id)
        marker = views.RerollButton(row.job_key).custom_id
        try:
            status = await channel.fetch_message(row.message_id)
            if _carries(status, marker):
                return status
        except discord.NotFound:
            pass  # the status message was deleted; a reply may still exist
        except discord.HTTPException as exc:
            logger.info("cannot check job %s's message (%s); rendering it again", row.job_key, exc)
            return None
        me = self.bot.user
        try:
            async for message in channel.history(after=discord.Object(row.message_id), limit=50):
                if (me is None or message.author.id == me.id) and _carries(message, marker):
                    return message
        except discord.HTTPException as exc:
            logger.info("cannot read job %s's channel (%s); rendering it again", row.job_key, exc)
        return None

    # ------------------------------------------------------------------ shutdown
    async def close(self) -> None:
        """Stop following jobs; their rows stay unfinished so the next start resumes them."""
        self._closing = True
        finishing = [
            job.task
            for job in self._jobs.values()
            if job.finishing and job.task is not None and not job.task.done()
        ]
        for job in list(self._jobs.values()):
            if job.reporter is not None:
                job.reporter.abandon()
        if finishing:
            logger.info("waiting for %d job(s) that are being delivered", len(finishing))
            _, late = await asyncio.wait(finishing, timeout=FINISH_GRACE_S)
            if late:
                logger.warning(
                    "%d delivery(ies) did not finish in time; they resume at the next start",
                    len(late),
                )
        tasks = [task for task in self._tasks if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _carries(message: discord.Message, custom_id: str) -> bool:
    return bool(message.attachments) and any(
        getattr(child, "custom_id", None) == custom_id
        for row in message.components
        for child in getattr(row, "children", ())
    )


_SIZE_FIELD = re.compile(r"(?P<w>\d+)×(?P<h>\d+)")
_MODE_FIELD = re.compile(r"^(?P<mode>\w+) · (?P<steps>\d+) steps(?: · CFG (?P<cfg>[\d.]+))?")


def delivered_fields(message: discord.Message, row: db.Generation) -> dict[str, Any]:
    """``complete_generation`` arguments recovered from a delivered message and its row."""
    attachment = message.attachments[0]
    embed = message.embeds[0] if message.embeds else None
    fields = {f.name: f.value or "" for f in embed.fields} if embed else {}
    mode = _MODE_FIELD.match(fields.get("Mode", ""))
    footer = (embed.footer.text or "") if embed else ""
    model, _, worker = footer.partition(" · ")
    size = _SIZE_FIELD.search(fields.get("Size", ""))
    return {
        "seed": row.seed if row.seed is not None else 0,
        "width": int(size["w"]) if size else attachment.width or 0,
        "height": int(size["h"]) if size else attachment.height or 0,
        "steps": int(mode["steps"]) if mode else 0,
        "true_cfg_scale": float(mode["cfg"]) if mode and mode["cfg"] else 1.0,
        "mode_used": mode["mode"] if mode else row.mode,
        "model": model or "unknown",
        "queued_s": 0.0,
        "run_s": 0.0,
        "message_id": message.id,
        "worker": worker or None,
        "note": "recorded from the delivered message after a restart",
        "now": utcnow(),
    }
