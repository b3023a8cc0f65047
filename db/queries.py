"""Every query the bot makes. Each function opens its own short transaction.

Rows come back detached (``expire_on_commit=False``): read their attributes freely, but change
them only through these functions. Datetimes are timezone-aware UTC.

Limits convention, used by guild settings, ``reserve_generation`` and ``quota_status``:
a daily quota or a queued-jobs cap of ``None`` **or 0** means "no limit". Discord's own command
permissions are the tool for "nobody may use /imagine here"; 0 is what admins type to lift a cap.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from db.database import Database
from db.models import (
    ACTIVE_STATUSES,
    BUILTIN_GUILD_ID,
    DM_GUILD_ID,
    Generation,
    GenerationKind,
    GenerationStatus,
    GuildSettings,
    QuotaUsage,
    Style,
)

log = logging.getLogger(__name__)

MAX_STYLE_NAME = 64
MAX_BLOCKED_WORD = 100
MAX_ERROR_CHARS = 2000
# Discord interaction tokens stop working 15 minutes after the interaction.
INTERACTION_TOKEN_TTL = dt.timedelta(minutes=15)


# --------------------------------------------------------------------------- errors


class QuotaExceeded(Exception):
    """The user has used the whole daily quota; nothing was charged or queued."""

    def __init__(self, used: int, limit: int, resets_at: dt.datetime) -> None:
        super().__init__(f"daily quota used: {used}/{limit}, resets at {resets_at.isoformat()}")
        self.used = used
        self.limit = limit
        self.resets_at = resets_at


class TooManyQueued(Exception):
    """The user already has ``limit`` jobs queued or running here; nothing was charged."""

    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(f"{queued} jobs queued or running, limit {limit}")
        self.queued = queued
        self.limit = limit


class StyleExists(Exception):
    """The guild already has its own style by that name (case-insensitive)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"style {name!r} already exists")
        self.name = name


class StyleNotFound(Exception):
    """No style of the guild's own by that name (built-ins cannot be edited or removed)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"style {name!r} not found")
        self.name = name


class GenerationNotFound(LookupError):
    """No generation row with that job key: a caller bug, never user input."""

    def __init__(self, job_key: str) -> None:
        super().__init__(f"no generation {job_key!r}")
        self.job_key = job_key


# --------------------------------------------------------------------------- value types


@dataclasses.dataclass(frozen=True)
class GuildConfig:
    """A guild's effective settings: its own choices, bot defaults for the rest.

    ``guild_id`` is None for direct messages, which always get the defaults.
    ``daily_quota`` / ``max_queued`` of 0 mean unlimited.
    """

    guild_id: int | None
    daily_quota: int
    max_queued: int
    blocked_words: tuple[str, ...] = ()
    allowed_channels: tuple[int, ...] = ()
    exempt_roles: tuple[int, ...] = ()
    # True where the value is the guild's own choice, False where it follows the bot default.
    custom_quota: bool = False
    custom_max_queued: bool = False

    def is_exempt(self, role_ids: Iterable[int]) -> bool:
        """Whether any of the member's roles lifts the daily quota."""
        exempt = set(self.exempt_roles)
        return any(role in exempt for role in role_ids)

    def quota_for(self, role_ids: Iterable[int]) -> int | None:
        """The daily quota to pass to ``reserve_generation``: None when unlimited or exempt."""
        if self.daily_quota <= 0 or self.is_exempt(role_ids):
            return None
        return self.daily_quota

    @property
    def queued_limit(self) -> int | None:
        """The cap to pass to ``reserve_generation`` as ``max_queued`` (None: no cap)."""
        return self.max_queued if self.max_queued > 0 else None

    def channel_allowed(self, channel_id: int | None) -> bool:
        """Whether /imagine may run in this channel (no list means everywhere)."""
        return not self.allowed_channels or channel_id in self.allowed_channels

    def find_blocked(self, text: str) -> str | None:
        """The first blocked word or phrase contained in ``text`` (case-insensitive), if any."""
        folded = text.casefold()
        for word in self.blocked_words:
            if word.casefold() in folded:
                return word
        return None


@dataclasses.dataclass(frozen=True)
class QuotaStatus:
    """Where a user stands today; ``limit``/``remaining`` are None when unlimited."""

    used: int
    limit: int | None
    remaining: int | None
    resets_at: dt.datetime


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


# --------------------------------------------------------------------------- time helpers


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _utc(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return utcnow()
    if now.tzinfo is None:
        return now.replace(tzinfo=dt.UTC)
    return now.astimezone(dt.UTC)


def _check_reset_hour(reset_hour: int) -> None:
    if not 0 <= reset_hour <= 23:
        raise ValueError(f"reset_hour must be 0..23, got {reset_hour}")


def quota_day(now: dt.datetime | None = None, reset_hour: int = 0) -> dt.date:
    """The quota day ``now`` falls in: days run from ``reset_hour``:00 UTC to the next."""
    _check_reset_hour(reset_hour)
    return (_utc(now) - dt.timedelta(hours=reset_hour)).date()


def quota_resets_at(now: dt.datetime | None = None, reset_hour: int = 0) -> dt.datetime:
    """The next quota day boundary after ``now`` (aware UTC)."""
    day = quota_day(now, reset_hour)
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(reset_hour), tzinfo=dt.UTC)


def _limit(value: int | None) -> int | None:
    return value if value is not None and value > 0 else None


def _quota_guild(guild_id: int | None) -> int:
    return DM_GUILD_ID if guild_id is None else guild_id


def _same_guild(guild_id: int | None) -> Any:
    return Generation.guild_id.is_(None) if guild_id is None else Generation.guild_id == guild_id


async def _insert_ignore(session: AsyncSession, model: type[Any], values: dict[str, Any]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING in the dialect at hand (SQLite, or PostgreSQL)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    await session.execute(insert(model).values(**values).on_conflict_do_nothing())


# --------------------------------------------------------------------------- guild settings


def _config(
    row: GuildSettings | None, guild_id: int | None, default_quota: int, default_max_queued: int
) -> GuildConfig:
    if row is None:
        return GuildConfig(guild_id, max(0, default_quota), max(0, default_max_queued))
    return GuildConfig(
        guild_id=guild_id,
        daily_quota=row.daily_quota if row.daily_quota is not None else max(0, default_quota),
        max_queued=row.max_queued if row.max_queued is not None else max(0, default_max_queued),
        blocked_words=tuple(row.blocked_words or ()),
        allowed_channels=tuple(int(c) for c in row.allowed_channels or ()),
        exempt_roles=tuple(int(r) for r in row.exempt_roles or ()),
        custom_quota=row.daily_quota is not None,
        custom_max_queued=row.max_queued is not None,
    )


async def _settings_row(session: AsyncSession, guild_id: int, now: dt.datetime) -> GuildSettings:
    row = await session.get(GuildSettings, guild_id)
    if row is None:
        row = GuildSettings(
            guild_id=guild_id,
            blocked_words=[],
            allowed_channels=[],
            exempt_roles=[],
            updated_at=now,
        )
        session.add(row)
    return row


def _unique_ids(ids: Sequence[int]) -> list[int]:
    return list(dict.fromkeys(int(i) for i in ids))


async def get_guild_config(
    db: Database, guild_id: int | None, *, default_quota: int, default_max_queued: int
) -> GuildConfig:
    """The guild's effective settings; DMs (None) and unknown guilds get the defaults."""
    if guild_id is None:
        return _config(None, None, default_quota, default_max_queued)
    async with db.readers() as session:
        row = await session.get(GuildSettings, guild_id)
        return _config(row, guild_id, default_quota, default_max_queued)


async def update_guild_config(
    db: Database,
    guild_id: int,
    *,
    default_quota: int,
    default_max_queued: int,
    daily_quota: int | None = None,
    max_queued: int | None = None,
    allowed_channels: Sequence[int] | None = None,
    exempt_roles: Sequence[int] | None = None,
) -> GuildConfig:
    """Change some settings (None leaves a field as it is) and return the result."""
    for name, value in (("daily_quota", daily_quota), ("max_queued", max_queued)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0 (0 means unlimited), got {value}")
    now = utcnow()
    async with db.sessions.begin() as session:
        row = await _settings_row(session, guild_id, now)
        if daily_quota is not None:
            row.daily_quota = daily_quota
        if max_queued is not None:
            row.max_queued = max_queued
        if allowed_channels is not None:
            row.allowed_channels = _unique_ids(allowed_channels)
        if exempt_roles is not None:
            row.exempt_roles = _unique_ids(exempt_roles)
        row.updated_at = now
        await session.flush()
        return _config(row, guild_id, default_quota, default_max_queued)


async def reset_guild_limits(
    db: Database, guild_id: int, *, default_quota: int, default_max_queued: int
) -> GuildConfig:
    """Make the guild follow the bot-wide quota and queue defaults again."""
    now = utcnow()
    async with db.sessions.begin() as session:
        row = await session.get(GuildSettings, guild_id)
        if row is not None:
            row.daily_quota = None
            row.max_queued = None
            row.updated_at = now
            await session.flush()
        return _config(row, guild_id, default_quota, default_max_queued)


def _clean_word(word: str) -> str:
    cleaned = " ".join(word.split())
    if not cleaned:
        raise ValueError("blocked word is empty")
    if len(cleaned) > MAX_BLOCKED_WORD:
        raise ValueError(f"blocked word is longer than {MAX_BLOCKED_WORD} characters")
    return cleaned


async def add_blocked_word(db: Database, guild_id: int, word: str) -> bool:
    """Block a word or phrase; False if it was already blocked (case-insensitive)."""
    cleaned = _clean_word(word)
    async with db.sessions.begin() as session:
        row = await _settings_row(session, guild_id, utcnow())
        words = list(row.blocked_words or [])
        if any(w.casefold() == cleaned.casefold() for w in words):
            return False
        # A new list object: the JSON column only notices reassignment, not in-place edits.
        row.blocked_words = [*words, cleaned]
        row.updated_at = utcnow()
        return True


async def remove_blocked_word(db: Database, guild_id: int, word: str) -> bool:
    """Unblock a word or phrase (case-insensitive); False if it was not blocked."""
    key = " ".join(word.split()).casefold()
    async with db.sessions.begin() as session:
        row = await session.get(GuildSettings, guild_id)
        if row is None:
            return False
        words = list(row.blocked_words or [])
        kept = [w for w in words if w.casefold() != key]
        if len(kept) == len(words):
            return False
        row.blocked_words = kept
        row.updated_at = utcnow()
        return True


# --------------------------------------------------------------------------- styles


def style_key(name: str) -> str:
    """The case-insensitive identity of a style name."""
    return name.strip().casefold()


def _check_style_name(name: str) -> str:
    cleaned = name.strip()
    if not cleaned:
        raise ValueError("style name is empty")
    if len(cleaned) > MAX_STYLE_NAME:
        raise ValueError(f"style name is longer than {MAX_STYLE_NAME} characters")
    return cleaned


async def sync_builtin_styles(db: Database, styles: Iterable[tuple[str, str, str, str]]) -> None:
    """Make the built-in rows (guild 0) exactly ``styles``: (name, template, negative,
    description). Run at start, so an upgrade that changes a preset reaches every guild."""
    wanted = {style_key(name): (name, t, n, d) for name, t, n, d in styles}
    now = utcnow()
    async with db.sessions.begin() as session:
        rows = (
            await session.scalars(select(Style).where(Style.guild_id == BUILTIN_GUILD_ID))
        ).all()
        existing = {row.name_key: row for row in rows}
        for key, row in existing.items():
            if key not in wanted:
                await session.delete(row)
        for key, (name, template, negative, description) in wanted.items():
            row = existing.get(key)
            if row is None:
                session.add(
                    Style(
                        guild_id=BUILTIN_GUILD_ID,
                        name=_check_style_name(name),
                        name_key=key,
                        template=template,
                        negative=negative,
                        description=description,
                        created_by=0,
                        created_at=now,
                        updated_at=now,
                    )
                )
            elif (row.name, row.template, row.negative, row.description) != (
                name,
                template,
                negative,
                description,
            ):
                row.name, row.template = name, template
                row.negative, row.description = negative, description
                row.updated_at = now


def _guild_scope(guild_id: int | None) -> Any:
    if guild_id is None or guild_id == BUILTIN_GUILD_ID:
        return Style.guild_id == BUILTIN_GUILD_ID
    return Style.guild_id.in_((BUILTIN_GUILD_ID, guild_id))


async def list_styles(db: Database, guild_id: int | None) -> list[Style]:
    """The guild's own styles plus the built-ins it does not shadow, sorted by name."""
    async with db.readers() as session:
        rows = (await session.scalars(select(Style).where(_guild_scope(guild_id)))).all()
    chosen: dict[str, Style] = {}
    for row in rows:
        current = chosen.get(row.name_key)
        if current is None or current.guild_id == BUILTIN_GUILD_ID:
            chosen[row.name_key] = row
    return sorted(chosen.values(), key=lambda s: (s.name_key, s.name))


async def get_style(db: Database, guild_id: int | None, name: str) -> Style | None:
    """A style by name (case-insensitive): the guild's own first, else the built-in."""
    async with db.readers() as session:
        rows = (
            await session.scalars(
                select(Style).where(_guild_scope(guild_id), Style.name_key == style_key(name))
            )
        ).all()
    if not rows:
        return None
    return max(rows, key=lambda s: s.guild_id != BUILTIN_GUILD_ID)


async def add_style(
    db: Database,
    guild_id: int,
    name: str,
    template: str,
    negative: str,
    description: str,
    created_by: int,
) -> Style:
    """Create a guild style; a built-in of the same name is shadowed in this guild."""
    if guild_id == BUILTIN_GUILD_ID:
        raise ValueError("guild id 0 is reserved for built-in styles")
    cleaned = _check_style_name(name)
    now = utcnow()
    try:
        async with db.sessions.begin() as session:
            clash = await session.scalar(
                select(Style.id).where(
                    Style.guild_id == guild_id, Style.name_key == style_key(name)
                )
            )
            if clash is not None:
                raise StyleExists(cleaned)
            style = Style(
                guild_id=guild_id,
                name=cleaned,
                name_key=style_key(name),
                template=template,
                negative=negative,
                description=description,
                created_by=created_by,
                created_at=now,
                updated_at=now,
            )
            session.add(style)
    except IntegrityError as exc:  # a concurrent add on a database without BEGIN IMMEDIATE
        raise StyleExists(cleaned) from exc
    return style


async def edit_style(
    db: Database,
    guild_id: int,
    name: str,
    *,
    template: str | None = None,
    negative: str | None = None,
    description: str | None = None,
) -> Style:
    """Change a guild-owned style (None leaves a field as it is)."""
    async with db.sessions.begin() as session:
        style = await session.scalar(
            select(Style).where(Style.guild_id == guild_id, Style.name_key == style_key(name))
        )
        if style is None or guild_id == BUILTIN_GUILD_ID:
            raise StyleNotFound(name.strip())
        if template is not None:
            style.template = template
        if negative is not None:
            style.negative = negative
        if description is not None:
            style.description = description
        style.updated_at = utcnow()
    return style


async def remove_style(db: Database, guild_id: int, name: str) -> bool:
    """Delete a guild-owned style; built-ins are never removed this way."""
    if guild_id == BUILTIN_GUILD_ID:
        return False
    async with db.sessions.begin() as session:
        result = await session.execute(
            delete(Style).where(Style.guild_id == guild_id, Style.name_key == style_key(name))
        )
        return bool(result.rowcount)


# --------------------------------------------------------------------------- generations


async def _charge(
    session: AsyncSession, guild_id: int, user_id: int, day: dt.date, limit: int
) -> int | None:
    """Take one unit if fewer than ``limit`` are used; the used count on refusal, else None.

    One conditional UPDATE does the check and the increment, so the check can never be stale.
    """
    await _insert_ignore(
        session, QuotaUsage, {"guild_id": guild_id, "user_id": user_id, "day": day, "used": 0}
    )
    key = (
        QuotaUsage.guild_id == guild_id,
        QuotaUsage.user_id == user_id,
        QuotaUsage.day == day,
    )
    result = await session.execute(
        update(QuotaUsage)
        .where(*key, QuotaUsage.used < limit)
        .values(used=QuotaUsage.used + 1)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:
        return None
    return int(await session.scalar(select(QuotaUsage.used).where(*key)) or 0)


async def _refund(session: AsyncSession, gen: Generation) -> None:
    await session.execute(
        update(QuotaUsage)
        .where(
            QuotaUsage.guild_id == _quota_guild(gen.guild_id),
            QuotaUsage.user_id == gen.user_id,
            QuotaUsage.day == gen.quota_day,
            QuotaUsage.used > 0,
        )
        .values(used=QuotaUsage.used - 1)
        .execution_options(synchronize_session=False)
    )
    gen.charged = False


async def _count_active(session: AsyncSession, guild_id: int | None, user_id: int) -> int:
    return int(
        await session.scalar(
            select(func.count())
            .select_from(Generation)
            .where(
                Generation.user_id == user_id,
                _same_guild(guild_id),
                Generation.status.in_(ACTIVE_STATUSES),
            )
        )
        or 0
    )


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
    _check_reset_hour(reset_hour)
    if new.kind not in tuple(GenerationKind):
        raise ValueError(f"unknown generation kind {new.kind!r}")
    now = _utc(now)
    day = quota_day(now, reset_hour)
    quota = _limit(daily_quota)
    queued_cap = _limit(max_queued)
    try:
        async with db.sessions.begin() as session:
            existing = await _by_key(session, new.job_key)
            if existing is not None:
                return existing, False
            charged = False
            if quota is not None:
                used = await _charge(session, _quota_guild(new.guild_id), new.user_id, day, quota)
                if used is not None:
                    raise QuotaExceeded(used, quota, quota_resets_at(now, reset_hour))
                charged = True
            if queued_cap is not None:
                active = await _count_active(session, new.guild_id, new.user_id)
                if active >= queued_cap:
                    raise TooManyQueued(active, queued_cap)  # rolls the charge back
            gen = Generation(
                job_key=new.job_key,
                kind=new.kind,
                parent_key=new.parent_key,
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
        result = await session.execute(
            update(Generation)
            .where(Generation.job_key == job_key, Generation.status == GenerationStatus.QUEUED)
            .values(status=GenerationStatus.RUNNING, started_at=_utc(now))
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)


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
    values: dict[str, Any] = {"message_id": message_id}
    if channel_id is not None:
        values["channel_id"] = channel_id
    if interaction_token is not None:
        values["interaction_token"] = interaction_token
    async with db.sessions.begin() as session:
        result = await session.execute(
            update(Generation)
            .where(Generation.job_key == job_key)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)


async def complete_generation(
    db: Database,
    job_key: str,
    *,
    seed: int,
    width: int,
    height: int,
    steps: int,
    true_cfg_scale: float,
    mode_used: str,
    model: str,
    queued_s: float,
    run_s: float,
    message_id: int | None = None,
    worker: str | None = None,
    note: str | None = None,
    now: dt.datetime | None = None,
) -> Generation:
    """Record the result and mark the job done; the quota unit stays spent.

    Idempotent: a job that already ended (done, failed or cancelled) comes back unchanged, so
    check ``status`` on the returned row before delivering a late result.
    """
    now = _utc(now)
    async with db.sessions.begin() as session:
        gen = await _require(session, job_key)
        if gen.finished:
            return gen
        gen.status = GenerationStatus.DONE
        gen.seed_used = seed
        gen.width, gen.height, gen.steps = width, height, steps
        gen.true_cfg_scale = true_cfg_scale
        gen.mode_used = str(mode_used)
        gen.model = model
        gen.queued_s, gen.run_s = queued_s, run_s
        gen.worker = worker
        gen.note = note
        if message_id is not None:
            gen.message_id = message_id
        if gen.started_at is None:
            gen.started_at = max(gen.created_at, now - dt.timedelta(seconds=max(0.0, run_s)))
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
            gen.finished_at = _utc(now)
        if refund and gen.charged:
            await _refund(session, gen)
    return gen


async def get_generation(db: Database, job_key: str) -> Generation | None:
    async with db.readers() as session:
        return await _by_key(session, job_key)


async def unfinished_generations(db: Database) -> list[Generation]:
    """Jobs still queued or running, oldest first: what a restarted bot must resume or end."""
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
    where = [Generation.user_id == user_id, _same_guild(guild_id)]
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


async def quota_status(
    db: Database,
    *,
    guild_id: int | None,
    user_id: int,
    daily_quota: int | None,
    reset_hour: int = 0,
    now: dt.datetime | None = None,
) -> QuotaStatus:
    """Today's usage for /quota (``daily_quota`` None or 0: unlimited)."""
    now = _utc(now)
    day = quota_day(now, reset_hour)
    async with db.readers() as session:
        used = await session.scalar(
            select(QuotaUsage.used).where(
                QuotaUsage.guild_id == _quota_guild(guild_id),
                QuotaUsage.user_id == user_id,
                QuotaUsage.day == day,
            )
        )
    used = int(used or 0)
    limit = _limit(daily_quota)
    remaining = None if limit is None else max(0, limit - used)
    return QuotaStatus(used, limit, remaining, quota_resets_at(now, reset_hour))


async def count_active(db: Database, *, guild_id: int | None, user_id: int) -> int:
    """The user's queued + running jobs in this guild (None: in DMs)."""
    async with db.readers() as session:
        return await _count_active(session, guild_id, user_id)


async def forget_expired_tokens(db: Database, *, now: dt.datetime | None = None) -> int:
    """Drop interaction tokens older than Discord's 15 minutes: useless, and still secrets."""
    cutoff = _utc(now) - INTERACTION_TOKEN_TTL
    async with db.sessions.begin() as session:
        result = await session.execute(
            update(Generation)
            .where(Generation.interaction_token.is_not(None), Generation.created_at < cutoff)
            .values(interaction_token=None)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount or 0)
