"""Quota reservation: atomic under concurrency, idempotent per job key, refunded once."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from db import (
    Database,
    Generation,
    GenerationStatus,
    NewGeneration,
    QuotaExceeded,
    QuotaUsage,
    TooManyQueued,
    complete_generation,
    count_active,
    fail_generation,
    get_generation,
    quota_day,
    quota_resets_at,
    quota_status,
    reserve_generation,
)

NOON = dt.datetime(2025, 3, 14, 12, 0, tzinfo=dt.UTC)
GUILD = 111_111_111_111_111_111
USER = 333_333_333_333_333_333

MakeJob = Callable[..., NewGeneration]


async def used_today(db: Database, guild_id: int = GUILD, user_id: int = USER) -> int:
    status = await quota_status(
        db, guild_id=guild_id, user_id=user_id, daily_quota=1000, reset_hour=0, now=NOON
    )
    return status.used


async def generation_rows(db: Database) -> list[Generation]:
    async with db.readers() as session:
        return list((await session.scalars(select(Generation))).all())


async def test_fifty_concurrent_reservations_against_limit_ten(
    database: Database, new_job: MakeJob
) -> None:
    async def attempt(i: int) -> Generation | QuotaExceeded:
        try:
            gen, created = await reserve_generation(
                database, new_job(job_key=f"race-{i}"), daily_quota=10, max_queued=None, now=NOON
            )
        except QuotaExceeded as exc:
            return exc
        assert created
        return gen

    outcomes = await asyncio.gather(*(attempt(i) for i in range(50)))

    won = [o for o in outcomes if isinstance(o, Generation)]
    refused = [o for o in outcomes if isinstance(o, QuotaExceeded)]
    assert len(won) == 10
    assert len(refused) == 40
    assert all(exc.used == 10 and exc.limit == 10 for exc in refused)
    assert await used_today(database) == 10
    rows = await generation_rows(database)
    assert sorted(r.job_key for r in rows) == sorted(g.job_key for g in won)
    assert all(r.charged and r.status == GenerationStatus.QUEUED for r in rows)


async def test_concurrent_requests_respect_max_queued(database: Database, new_job: MakeJob) -> None:
    async def attempt(i: int) -> bool:
        try:
            await reserve_generation(
                database, new_job(job_key=f"q-{i}"), daily_quota=100, max_queued=4, now=NOON
            )
        except TooManyQueued:
            return False
        return True

    outcomes = await asyncio.gather(*(attempt(i) for i in range(20)))

    assert outcomes.count(True) == 4
    assert await count_active(database, guild_id=GUILD, user_id=USER) == 4
    # Refused requests charged nothing.
    assert await used_today(database) == 4


async def test_quota_exceeded_reports_usage_and_next_reset(
    database: Database, new_job: MakeJob
) -> None:
    for _ in range(3):
        await reserve_generation(database, new_job(), daily_quota=3, max_queued=None, now=NOON)

    with pytest.raises(QuotaExceeded) as info:
        await reserve_generation(
            database, new_job(job_key="late"), daily_quota=3, max_queued=None, now=NOON
        )

    assert (info.value.used, info.value.limit) == (3, 3)
    assert info.value.resets_at == dt.datetime(2025, 3, 15, 0, 0, tzinfo=dt.UTC)
    assert await get_generation(database, "late") is None
    assert await used_today(database) == 3


async def test_too_many_queued_charges_nothing_and_frees_up_when_a_job_ends(
    database: Database, new_job: MakeJob
) -> None:
    first, _ = await reserve_generation(database, new_job(), daily_quota=10, max_queued=2, now=NOON)
    await reserve_generation(database, new_job(), daily_quota=10, max_queued=2, now=NOON)

    with pytest.raises(TooManyQueued) as info:
        await reserve_generation(
            database, new_job(job_key="third"), daily_quota=10, max_queued=2, now=NOON
        )
    assert (info.value.queued, info.value.limit) == (2, 2)
    assert await used_today(database) == 2
    assert await get_generation(database, "third") is None

    await complete_generation(
        database,
        first.job_key,
        seed=1,
        width=64,
        height=64,
        steps=2,
        true_cfg_scale=4.0,
        mode_used="standard",
        model="tiny",
        queued_s=0.1,
        run_s=0.2,
    )
    gen, created = await reserve_generation(
        database, new_job(job_key="third"), daily_quota=10, max_queued=2, now=NOON
    )
    assert created and gen.job_key == "third"
    assert await used_today(database) == 3


async def test_max_queued_counts_per_guild(database: Database, new_job: MakeJob) -> None:
    await reserve_generation(database, new_job(), daily_quota=None, max_queued=1, now=NOON)
    # Same user, another guild and a DM: separate caps.
    await reserve_generation(
        database, new_job(guild_id=999), daily_quota=None, max_queued=1, now=NOON
    )
    await reserve_generation(
        database, new_job(guild_id=None), daily_quota=None, max_queued=1, now=NOON
    )
    with pytest.raises(TooManyQueued):
        await reserve_generation(database, new_job(), daily_quota=None, max_queued=1, now=NOON)
    assert await count_active(database, guild_id=None, user_id=USER) == 1


async def test_same_job_key_never_charges_twice(database: Database, new_job: MakeJob) -> None:
    job = new_job(job_key="1234567890")
    first, created_first = await reserve_generation(
        database, job, daily_quota=1, max_queued=1, now=NOON
    )
    # Redelivery: the quota is now used up and the queue is full, yet the same key gets its
    # row back instead of an error.
    again, created_again = await reserve_generation(
        database, job, daily_quota=1, max_queued=1, now=NOON
    )

    assert created_first and not created_again
    assert again.id == first.id and again.job_key == "1234567890"
    assert await used_today(database) == 1
    assert len(await generation_rows(database)) == 1


async def test_same_job_key_concurrently_creates_one_row(
    database: Database, new_job: MakeJob
) -> None:
    job = new_job(job_key="dup")
    results = await asyncio.gather(
        *(
            reserve_generation(database, job, daily_quota=5, max_queued=None, now=NOON)
            for _ in range(10)
        )
    )

    assert [created for _, created in results].count(True) == 1
    assert len({gen.id for gen, _ in results}) == 1
    assert await used_today(database) == 1


async def test_refund_happens_exactly_once(database: Database, new_job: MakeJob) -> None:
    gen, _ = await reserve_generation(database, new_job(), daily_quota=2, max_queued=None, now=NOON)
    await reserve_generation(database, new_job(), daily_quota=2, max_queued=None, now=NOON)
    assert await used_today(database) == 2

    failed = await fail_generation(database, gen.job_key, status="failed", error="out of memory")
    again = await fail_generation(database, gen.job_key, status="cancelled", error="later")

    assert await used_today(database) == 1
    assert failed.status == again.status == GenerationStatus.FAILED
    assert again.error == "out of memory"
    assert not again.charged
    assert again.finished_at is not None and again.finished_at.tzinfo == dt.UTC


async def test_concurrent_refunds_give_back_one_unit(database: Database, new_job: MakeJob) -> None:
    gen, _ = await reserve_generation(database, new_job(), daily_quota=5, max_queued=None, now=NOON)
    await reserve_generation(database, new_job(), daily_quota=5, max_queued=None, now=NOON)

    await asyncio.gather(
        *(
            fail_generation(database, gen.job_key, status="cancelled", error="cancelled")
            for _ in range(8)
        )
    )

    assert await used_today(database) == 1


async def test_refund_goes_to_the_day_that_was_charged(
    database: Database, new_job: MakeJob
) -> None:
    before_midnight = dt.datetime(2025, 3, 14, 23, 59, tzinfo=dt.UTC)
    gen, _ = await reserve_generation(
        database, new_job(), daily_quota=1, max_queued=None, now=before_midnight
    )
    after_midnight = before_midnight + dt.timedelta(minutes=2)
    await reserve_generation(
        database, new_job(), daily_quota=1, max_queued=None, now=after_midnight
    )

    await fail_generation(database, gen.job_key, status="failed", error="timeout")

    old = await quota_status(
        database, guild_id=GUILD, user_id=USER, daily_quota=1, now=before_midnight
    )
    new = await quota_status(
        database, guild_id=GUILD, user_id=USER, daily_quota=1, now=after_midnight
    )
    assert (old.used, new.used) == (0, 1)


async def test_cancel_without_refund_keeps_the_unit(database: Database, new_job: MakeJob) -> None:
    gen, _ = await reserve_generation(database, new_job(), daily_quota=2, max_queued=None, now=NOON)
    row = await fail_generation(
        database, gen.job_key, status="cancelled", error="deleted", refund=False
    )
    assert row.status == GenerationStatus.CANCELLED and row.charged
    assert await used_today(database) == 1
    # A later refund request still gives it back, once.
    await fail_generation(database, gen.job_key, status="cancelled", error="x")
    await fail_generation(database, gen.job_key, status="cancelled", error="x")
    assert await used_today(database) == 0


async def test_done_jobs_are_never_refunded(database: Database, new_job: MakeJob) -> None:
    gen, _ = await reserve_generation(database, new_job(), daily_quota=2, max_queued=None, now=NOON)
    await complete_generation(
        database,
        gen.job_key,
        seed=7,
        width=64,
        height=64,
        steps=2,
        true_cfg_scale=1.0,
        mode_used="fast",
        model="tiny",
        queued_s=0.0,
        run_s=0.5,
    )
    row = await fail_generation(database, gen.job_key, status="failed", error="too late")
    assert row.status == GenerationStatus.DONE and row.error is None and row.charged
    assert await used_today(database) == 1


@pytest.mark.parametrize("unlimited", [None, 0])
async def test_unlimited_members_are_not_charged(
    database: Database, new_job: MakeJob, unlimited: int | None
) -> None:
    rows = [
        (
            await reserve_generation(
                database, new_job(), daily_quota=unlimited, max_queued=None, now=NOON
            )
        )[0]
        for _ in range(5)
    ]
    assert not any(r.charged for r in rows)
    status = await quota_status(
        database, guild_id=GUILD, user_id=USER, daily_quota=unlimited, now=NOON
    )
    assert (status.used, status.limit, status.remaining) == (0, None, None)
    # Refunding an uncharged job must not eat someone's charged unit.
    await reserve_generation(database, new_job(), daily_quota=3, max_queued=None, now=NOON)
    await fail_generation(database, rows[0].job_key, status="failed", error="x")
    status = await quota_status(database, guild_id=GUILD, user_id=USER, daily_quota=3, now=NOON)
    assert (status.used, status.remaining) == (1, 2)


async def test_quota_is_per_guild_and_dms_have_their_own(
    database: Database, new_job: MakeJob
) -> None:
    await reserve_generation(database, new_job(), daily_quota=1, max_queued=None, now=NOON)
    await reserve_generation(
        database, new_job(guild_id=999), daily_quota=1, max_queued=None, now=NOON
    )
    dm, _ = await reserve_generation(
        database, new_job(guild_id=None, channel_id=None), daily_quota=1, max_queued=None, now=NOON
    )
    assert dm.guild_id is None and dm.charged
    with pytest.raises(QuotaExceeded):
        await reserve_generation(
            database, new_job(guild_id=None), daily_quota=1, max_queued=None, now=NOON
        )
    # Another user in the same guild is unaffected.
    await reserve_generation(
        database, new_job(user_id=42), daily_quota=1, max_queued=None, now=NOON
    )
    dm_status = await quota_status(database, guild_id=None, user_id=USER, daily_quota=1, now=NOON)
    assert (dm_status.used, dm_status.remaining) == (1, 0)
    # The DM refund goes back to the DM bucket.
    await fail_generation(database, dm.job_key, status="failed", error="x")
    dm_status = await quota_status(database, guild_id=None, user_id=USER, daily_quota=1, now=NOON)
    assert dm_status.used == 0
    async with database.readers() as session:
        buckets = await session.scalar(select(func.count()).select_from(QuotaUsage))
    assert buckets == 4


async def test_quota_day_follows_reset_hour(database: Database, new_job: MakeJob) -> None:
    reset_hour = 5
    before = dt.datetime(2025, 3, 14, 4, 59, 59, tzinfo=dt.UTC)
    at = dt.datetime(2025, 3, 14, 5, 0, 0, tzinfo=dt.UTC)

    gen, _ = await reserve_generation(
        database, new_job(), daily_quota=1, max_queued=None, reset_hour=reset_hour, now=before
    )
    assert gen.quota_day == dt.date(2025, 3, 13)
    with pytest.raises(QuotaExceeded) as info:
        await reserve_generation(
            database, new_job(), daily_quota=1, max_queued=None, reset_hour=reset_hour, now=before
        )
    assert info.value.resets_at == at

    # At the reset hour the user has a fresh day.
    gen2, created = await reserve_generation(
        database, new_job(), daily_quota=1, max_queued=None, reset_hour=reset_hour, now=at
    )
    assert created and gen2.quota_day == dt.date(2025, 3, 14)
    status = await quota_status(
        database, guild_id=GUILD, user_id=USER, daily_quota=1, reset_hour=reset_hour, now=at
    )
    assert status.resets_at == dt.datetime(2025, 3, 15, 5, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("now", "reset_hour", "day", "resets_at"),
    [
        (dt.datetime(2025, 1, 1, 0, 0), 0, dt.date(2025, 1, 1), dt.datetime(2025, 1, 2, 0, 0)),
        (dt.datetime(2024, 12, 31, 23, 59), 0, dt.date(2024, 12, 31), dt.datetime(2025, 1, 1)),
        (dt.datetime(2025, 1, 1, 2, 0), 3, dt.date(2024, 12, 31), dt.datetime(2025, 1, 1, 3, 0)),
        (dt.datetime(2025, 1, 1, 3, 0), 3, dt.date(2025, 1, 1), dt.datetime(2025, 1, 2, 3, 0)),
        (dt.datetime(2024, 2, 29, 22, 0), 23, dt.date(2024, 2, 28), dt.datetime(2024, 2, 29, 23)),
        (dt.datetime(2024, 3, 1, 23, 0), 23, dt.date(2024, 3, 1), dt.datetime(2024, 3, 2, 23, 0)),
    ],
)
def test_quota_day_boundaries(
    now: dt.datetime, reset_hour: int, day: dt.date, resets_at: dt.datetime
) -> None:
    now = now.replace(tzinfo=dt.UTC)
    assert quota_day(now, reset_hour) == day
    assert quota_resets_at(now, reset_hour) == resets_at.replace(tzinfo=dt.UTC)
    assert quota_resets_at(now, reset_hour).tzinfo == dt.UTC


def test_quota_day_converts_other_timezones_to_utc() -> None:
    tokyo = dt.timezone(dt.timedelta(hours=9))
    # 08:00 in Tokyo is 23:00 UTC the day before.
    assert quota_day(dt.datetime(2025, 6, 2, 8, 0, tzinfo=tokyo)) == dt.date(2025, 6, 1)


@pytest.mark.parametrize("bad", [-1, 24])
def test_reset_hour_out_of_range_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="reset_hour"):
        quota_day(NOON, bad)


@given(
    now=st.datetimes(
        min_value=dt.datetime(2000, 1, 2),
        max_value=dt.datetime(2100, 1, 1),
        timezones=st.just(dt.UTC),
    ),
    reset_hour=st.integers(0, 23),
)
def test_resets_at_is_the_next_boundary(now: dt.datetime, reset_hour: int) -> None:
    boundary = quota_resets_at(now, reset_hour)
    assert dt.timedelta(0) < boundary - now <= dt.timedelta(hours=24)
    assert boundary.hour == reset_hour and boundary.minute == 0 and boundary.second == 0
    assert quota_day(boundary - dt.timedelta(microseconds=1), reset_hour) == quota_day(
        now, reset_hour
    )
    assert quota_day(boundary, reset_hour) == quota_day(now, reset_hour) + dt.timedelta(days=1)


async def test_quota_status_counts_down(database: Database, new_job: MakeJob) -> None:
    status = await quota_status(database, guild_id=GUILD, user_id=USER, daily_quota=3, now=NOON)
    assert (status.used, status.limit, status.remaining) == (0, 3, 3)
    await reserve_generation(database, new_job(), daily_quota=3, max_queued=None, now=NOON)
    status = await quota_status(database, guild_id=GUILD, user_id=USER, daily_quota=3, now=NOON)
    assert (status.used, status.limit, status.remaining) == (1, 3, 2)
    # An admin lowering the quota below today's use shows 0 left, never a negative number.
    status = await quota_status(database, guild_id=GUILD, user_id=USER, daily_quota=1, now=NOON)
    assert status.remaining == 0
    assert status.resets_at == dt.datetime(2025, 3, 15, tzinfo=dt.UTC)
