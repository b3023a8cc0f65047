"""Daily quotas and queued-job caps: quota days, charging a unit, refunding it exactly once,
and what ``/quota`` shows.

A quota day runs from ``reset_hour``:00 UTC to the next; units are counted per member and
guild (direct messages count under their own id).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from db.database import Database
from db.models import ACTIVE_STATUSES, Generation, QuotaUsage
from db.queries.common import (
    as_utc,
    insert_ignore,
    limit_or_none,
    quota_guild,
    rows_changed,
    same_guild,
)


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


@dataclasses.dataclass(frozen=True)
class QuotaStatus:
    """Where a user stands today; ``limit``/``remaining`` are None when unlimited."""

    used: int
    limit: int | None
    remaining: int | None
    resets_at: dt.datetime


def check_reset_hour(reset_hour: int) -> None:
    if not 0 <= reset_hour <= 23:
        raise ValueError(f"reset_hour must be 0..23, got {reset_hour}")


def quota_day(now: dt.datetime | None = None, reset_hour: int = 0) -> dt.date:
    """The quota day ``now`` falls in: days run from ``reset_hour``:00 UTC to the next."""
    check_reset_hour(reset_hour)
    return (as_utc(now) - dt.timedelta(hours=reset_hour)).date()


def quota_resets_at(now: dt.datetime | None = None, reset_hour: int = 0) -> dt.datetime:
    """The next quota day boundary after ``now`` (aware UTC)."""
    day = quota_day(now, reset_hour)
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(reset_hour), tzinfo=dt.UTC)


async def charge(
    session: AsyncSession, guild_id: int, user_id: int, day: dt.date, limit: int
) -> int | None:
    """Take one unit if fewer than ``limit`` are used; the used count on refusal, else None.

    One conditional UPDATE does the check and the increment, so the check can never be stale.
    """
    await insert_ignore(
        session, QuotaUsage, {"guild_id": guild_id, "user_id": user_id, "day": day, "used": 0}
    )
    key = (
        QuotaUsage.guild_id == guild_id,
        QuotaUsage.user_id == user_id,
        QuotaUsage.day == day,
    )
    taken = await rows_changed(
        session,
        update(QuotaUsage)
        .where(*key, QuotaUsage.used < limit)
        .values(used=QuotaUsage.used + 1)
        .execution_options(synchronize_session=False),
    )
    if taken == 1:
        return None
    return int(await session.scalar(select(QuotaUsage.used).where(*key)) or 0)


async def refund_charge(session: AsyncSession, gen: Generation) -> None:
    """Give the job's unit back; the caller checked ``gen.charged`` (once, in its transaction)."""
    await session.execute(
        update(QuotaUsage)
        .where(
            QuotaUsage.guild_id == quota_guild(gen.guild_id),
            QuotaUsage.user_id == gen.user_id,
            QuotaUsage.day == gen.quota_day,
            QuotaUsage.used > 0,
        )
        .values(used=QuotaUsage.used - 1)
        .execution_options(synchronize_session=False)
    )
    gen.charged = False


async def active_in(session: AsyncSession, guild_id: int | None, user_id: int) -> int:
    """The user's unfinished jobs in this guild, inside the caller's transaction."""
    return int(
        await session.scalar(
            select(func.count())
            .select_from(Generation)
            .where(
                Generation.user_id == user_id,
                same_guild(guild_id),
                Generation.status.in_(ACTIVE_STATUSES),
            )
        )
        or 0
    )


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
    now = as_utc(now)
    day = quota_day(now, reset_hour)
    async with db.readers() as session:
        used = await session.scalar(
            select(QuotaUsage.used).where(
                QuotaUsage.guild_id == quota_guild(guild_id),
                QuotaUsage.user_id == user_id,
                QuotaUsage.day == day,
            )
        )
    used = int(used or 0)
    limit = limit_or_none(daily_quota)
    remaining = None if limit is None else max(0, limit - used)
    return QuotaStatus(used, limit, remaining, quota_resets_at(now, reset_hour))


async def count_active(db: Database, *, guild_id: int | None, user_id: int) -> int:
    """The user's queued, running and delivering jobs in this guild (None: in DMs)."""
    async with db.readers() as session:
        return await active_in(session, guild_id, user_id)
