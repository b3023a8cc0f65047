"""A job's row, from the reservation to its end: reserve (quota and row in one transaction),
running, the result written down before the upload (``delivering``), done or failed with a
refund; plus what a restarted bot must resume and the per-member history."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Iterable

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from db.database import Database
from db.models import ACTIVE_STATUSES, Generation, GenerationStatus
from db.queries.common import as_utc, limit_or_none, quota_guild, rows_changed, same_guild
from db.queries.quota import (
    QuotaExceeded,
    TooManyQueued,
    active_in,
    charge,
    check_reset_hour,
    quota_day,
    quota_resets_at,
    refund_charge,
)

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 2000
MAX_KIND_CHARS = 16  # generations.kind
# Discord interaction tokens stop working 15 minutes after the interaction.
INTERACTION_TOKEN_TTL = dt.timedelta(minutes=15)


class GenerationNotFound(LookupError):
    """No generation row with that job key: a caller bug, never user input."""

    def __init__(self, job_key: str) -> None:
        super().__init__(f"no generation {job_key!r}")
        self.job_key = job_key


@dataclasses.dataclass(frozen=True)
class NewGeneration:
    """What the bot knows when a request arrives; ``job_key`` is the interaction id."""

    job_key: str
    user_id: int
    channel_id: int | None
    guild_id: int | None
    prompt: str
    style: str
    aspect: str
    mode: str
    negative_prompt: str | None = None
    seed: int | None = None
    kind: str = "imagine"
    parent_key: str | None = None
    strength: float | None = None  # a variation's img2img strength
    inputs: tuple[str, ...] = ()  # the job's input images, by image-store key


@dataclasses.dataclass(frozen=True)
class JobResultFields:
    """What the engine reports about a finished image; stored on the job's row."""

    seed: int
    width: int
    height: int
    steps: int
    true_cfg_scale: float
    mode_used: str
    model: str
    queued_s: float
    run_s: float
    worker: str | None = None
    note: str | None = None
    # What the model read (``JobResult.full_prompt`` / ``negative_prompt``), for Details.
    model_prompt: str | None = None
    model_negative: str | None = None


async def _by_key(session: AsyncSession, job_key: str) -> Generation | None:
    return await session.scalar(select(Generation).where(Generation.job_key == job_key))


async def _require(session: AsyncSession, job_key: str) -> Generation:
    gen = await _by_key(session, job_key)
    if gen is None:
        raise GenerationNotFound(job_key)
    return gen


async def reserve_generation(
    db: Database,
    new: NewGeneration,
    *,
    daily_quota: int | None,
    max_queued: int | None,
    reset_hour: int = 0,
    now: dt.datetime | None = None,
) -> tuple[Generation, bool]:
    """Charge one quota unit and write the queued job row, atomically.

    Returns ``(row, True)`` for a new job. A job key seen before returns ``(existing, False)``
    with no checks and no charge, so a redelivered interaction is harmless. Raises
    ``QuotaExceeded`` or ``TooManyQueued`` with nothing written. ``daily_quota`` None or 0:
    unlimited (exempt members), and nothing is charged.
    """
    check_reset_hour(reset_hour)
    if not 0 < len(new.kind) <= MAX_KIND_CHARS:
        raise ValueError(f"a generation kind is 1 to {MAX_KIND_CHARS} characters: {new.kind!r}")
    now = as_utc(now)
    day = quota_day(now, reset_hour)
    quota = limit_or_none(daily_quota)
    queued_cap = limit_or_none(max_queued)
    try:
        async with db.sessions.begin() as session:
            existing = await _by_key(session, new.job_key)
            if existing is not None:
                return existing, False
            charged = False
            if quota is not None:
                used = await charge(session, quota_guild(new.guild_id), new.user_id, day, quota)
                if used is not None:
                    raise QuotaExceeded(used, quota, quota_resets_at(now, reset_hour))
                charged = True
            if queued_cap is not None:
                active = await active_in(session, new.guild_id, new.user_id)
                if active >= queued_cap:
                    raise TooManyQueued(active, queued_cap)  # rolls the charge back
            gen = Generation(
                job_key=new.job_key,
                kind=new.kind,
                parent_key=new.parent_key,
                strength=new.strength,
                inputs=list(new.inputs),
                guild_id=new.guild_id,
                channel_id=new.channel_id,
                user_id=new.user_id,
                prompt=new.prompt,
                negative_prompt=new.negative_prompt,
                style=new.style,
                aspect=new.aspect,
                seed=new.seed,
                mode=str(new.mode),
                status=GenerationStatus.QUEUED,
                charged=charged,
                quota_day=day,
                created_at=now,
            )
            session.add(gen)
    except IntegrityError:
        # Only reachable where BEGIN IMMEDIATE is not in force (another backend): the same
        # key won a race. Its row is the answer, exactly as if it had been seen first.
        async with db.readers() as session:
            existing = await _by_key(session, new.job_key)
        if existing is None:
            raise
        return existing, False
    return gen, True


async def mark_running(db: Database, job_key: str, *, now: dt.datetime | None = None) -> bool:
    """queued -> running; False (and no change) if the job is not queued."""
    async with db.sessions.begin() as session:
        changed = await rows_changed(
            session,
            update(Generation)
            .where(Generation.job_key == job_key, Generation.status == GenerationStatus.QUEUED)
            .values(status=GenerationStatus.RUNNING, started_at=as_utc(now))
            .execution_options(synchronize_session=False),
        )
        return bool(changed)


async def set_message(
    db: Database,
    job_key: str,
    *,
    message_id: int | None,
    channel_id: int | None = None,
    interaction_token: str | None = None,
) -> bool:
    """Remember where the job's message is (channel and token: None leaves them as they are).

    Returns False if there is no such job.
    """
    values: dict[str, int | str | None] = {"message_id": message_id}
    if channel_id is not None:
        values["channel_id"] = channel_id
    if interaction_token is not None:
        values["interaction_token"] = interaction_token
    async with db.sessions.begin() as session:
        changed = await rows_changed(
            session,
            update(Generation)
            .where(Generation.job_key == job_key)
            .values(**values)
            .execution_options(synchronize_session=False),
        )
        return bool(changed)


def _apply_result(gen: Generation, result: JobResultFields, now: dt.datetime) -> None:
    gen.seed_used = result.seed
    gen.width, gen.height, gen.steps = result.width, result.height, result.steps
    gen.true_cfg_scale = result.true_cfg_scale
    gen.mode_used = str(result.mode_used)
    gen.model = result.model
    gen.queued_s, gen.run_s = result.queued_s, result.run_s
    gen.worker = result.worker
    gen.note = result.note
    if result.model_prompt is not None:
        gen.model_prompt = result.model_prompt
        gen.model_negative = result.model_negative
    gen.result_at = now
    if gen.started_at is None:
        gen.started_at = max(gen.created_at, now - dt.timedelta(seconds=max(0.0, result.run_s)))


async def record_result(
    db: Database, job_key: str, result: JobResultFields, *, now: dt.datetime | None = None
) -> Generation:
    """Write the result down *before* the upload and mark the job ``delivering``.

    A crash during the upload then leaves everything a restarted bot needs on the row: it only
    has to find the message (by its buttons) and call ``complete_generation``. A job that
    already ended comes back unchanged: check ``status`` before uploading anything.
    """
    now = as_utc(now)
    async with db.sessions.begin() as session:
        gen = await _require(session, job_key)
        if gen.finished:
            return gen
        _apply_result(gen, result, now)
        gen.status = GenerationStatus.DELIVERING
    return gen


async def complete_generation(
    db: Database,
    job_key: str,
    *,
    message_id: int | None = None,
    now: dt.datetime | None = None,
    seed: int | None = None,
    width: int | None = None,
    height: int | None = None,
    steps: int | None = None,
    true_cfg_scale: float | None = None,
    mode_used: str | None = None,
    model: str | None = None,
    queued_s: float | None = None,
    run_s: float | None = None,
    worker: str | None = None,
    note: str | None = None,
) -> Generation:
    """Mark the job done where its image now is (``message_id``); the quota unit stays spent.

    The result normally came with ``record_result`` before the upload; passing the result
    fields here (all of seed, size, steps, CFG, mode, model and timings) records them in the
    same transaction instead. Idempotent: a job that already ended (done, failed or cancelled)
    comes back unchanged, so check ``status`` on the returned row.
    """
    now = as_utc(now)
    core = (seed, width, height, steps, true_cfg_scale, mode_used, model, queued_s, run_s)
    result: JobResultFields | None = None
    if any(value is not None for value in core):
        if any(value is None for value in core):
            raise ValueError("give every result field, or none (record_result wrote them)")
        result = JobResultFields(*core, worker=worker, note=note)  # type: ignore[arg-type]
    async with db.sessions.begin() as session:
        gen = await _require(session, job_key)
        if gen.finished:
            return gen
        if result is not None:
            _apply_result(gen, result, now)
        gen.status = GenerationStatus.DONE
        if message_id is not None:
            gen.message_id = message_id
        if gen.started_at is None:
            gen.started_at = gen.created_at
        gen.finished_at = now
    return gen


async def fail_generation(
    db: Database,
    job_key: str,
    *,
    status: str,
    error: str,
    refund: bool = True,
    now: dt.datetime | None = None,
) -> Generation:
    """End a job as failed or cancelled and give its quota unit back (exactly once).

    A job already done is returned unchanged and never refunded. A job that already failed
    keeps its first status and error; a second call only refunds if the first did not.
    """
    final = GenerationStatus(status)
    if final not in (GenerationStatus.FAILED, GenerationStatus.CANCELLED):
        raise ValueError(f"status must be failed or cancelled, got {status!r}")
    async with db.sessions.begin() as session:
        gen = await _require(session, job_key)
        if gen.status == GenerationStatus.DONE:
            return gen
        if not gen.finished:
            gen.status = final
            gen.error = error[:MAX_ERROR_CHARS]
            gen.finished_at = as_utc(now)
        if refund and gen.charged:
            await refund_charge(session, gen)
    return gen


async def get_generation(db: Database, job_key: str) -> Generation | None:
    async with db.readers() as session:
        return await _by_key(session, job_key)


async def unfinished_generations(db: Database) -> list[Generation]:
    """Jobs still queued, running or delivering, oldest first: what a restarted bot must
    resume or end."""
    async with db.readers() as session:
        rows = await session.scalars(
            select(Generation)
            .where(Generation.status.in_(ACTIVE_STATUSES))
            .order_by(Generation.created_at, Generation.id)
        )
        return list(rows.all())


async def user_history(
    db: Database,
    *,
    user_id: int,
    guild_id: int | None,
    page: int,
    per_page: int = 5,
    statuses: Iterable[str] | None = None,
) -> tuple[list[Generation], int]:
    """One page of a user's generations in this guild (None: in DMs), newest first.

    Returns ``(rows, total)``; pages start at 1, and a page past the end is empty. History is
    per guild so one server never sees prompts typed in another.
    """
    if per_page < 1:
        raise ValueError("per_page must be >= 1")
    page = max(1, page)
    where = [Generation.user_id == user_id, same_guild(guild_id)]
    if statuses is not None:
        where.append(Generation.status.in_([str(s) for s in statuses]))
    async with db.readers() as session:
        total = int(
            await session.scalar(select(func.count()).select_from(Generation).where(*where)) or 0
        )
        rows = await session.scalars(
            select(Generation)
            .where(*where)
            .order_by(Generation.created_at.desc(), Generation.id.desc())
            .limit(per_page)
            .offset((page - 1) * per_page)
        )
        return list(rows.all()), total


async def forget_expired_tokens(db: Database, *, now: dt.datetime | None = None) -> int:
    """Drop interaction tokens older than Discord's 15 minutes: useless, and still secrets."""
    cutoff = as_utc(now) - INTERACTION_TOKEN_TTL
    async with db.sessions.begin() as session:
        return await rows_changed(
            session,
            update(Generation)
            .where(Generation.interaction_token.is_not(None), Generation.created_at < cutoff)
            .values(interaction_token=None)
            .execution_options(synchronize_session=False),
        )
