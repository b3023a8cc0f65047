"""History retention: finished rows older than the retention period go, with their stored
image rows (the files they alone referenced are reported for deletion); unfinished rows stay
whatever their age."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from sqlalchemy import func, select

import db
from db import Database, NewGeneration
from tests.db.conftest import NOON

MakeJob = Callable[..., NewGeneration]


async def job(
    database: Database,
    new_job: MakeJob,
    *,
    days_ago: float,
    status: str,
    sha: str | None = None,
    inputs: tuple[str, ...] = (),
) -> str:
    when = NOON - dt.timedelta(days=days_ago)
    row, _ = await db.reserve_generation(
        database, new_job(), daily_quota=None, max_queued=None, now=when
    )
    key = row.job_key
    if status == "done":
        await db.complete_generation(database, key, message_id=1, now=when)
    elif status == "failed":
        await db.fail_generation(database, key, status="failed", error="x", now=when)
    elif status == "running":
        await db.mark_running(database, key, now=when)
    if sha is not None:
        await db.add_image(
            database,
            job_key=key,
            sha256=sha * 64,
            size=1,
            width=1,
            height=1,
            thumb_size=1,
            user_id=row.user_id,
            guild_id=row.guild_id,
            now=when,
        )
    for number, input_sha in enumerate(inputs, start=1):  # an edit's kept inputs
        await db.add_image(
            database,
            job_key=f"{key}:in{number}",
            sha256=input_sha * 64,
            size=1,
            width=1,
            height=1,
            thumb_size=1,
            user_id=row.user_id,
            guild_id=row.guild_id,
            now=when,
        )
    return key


async def images(database: Database) -> set[str]:
    async with database.readers() as session:
        return set((await session.scalars(select(db.ImageRecord.job_key))).all())


async def test_old_finished_rows_go_with_their_images(database: Database, new_job: MakeJob) -> None:
    old_done = await job(database, new_job, days_ago=40, status="done", sha="a", inputs=("c",))
    old_failed = await job(database, new_job, days_ago=31, status="failed")
    shared = await job(database, new_job, days_ago=45, status="done", sha="b")
    young = await job(database, new_job, days_ago=2, status="done", sha="b")  # same bytes
    old_running = await job(database, new_job, days_ago=60, status="running")
    old_queued = await job(database, new_job, days_ago=60, status="queued")

    pruned = await db.prune_history(database, older_than=NOON - dt.timedelta(days=30))

    assert pruned.generations == 3 and pruned.images == 3
    # "a" and the edit input "c" are referenced by nobody now; "b" still by the young job.
    assert sorted(pruned.unreferenced) == ["a" * 64, "c" * 64]
    for gone in (old_done, old_failed, shared):
        assert await db.get_generation(database, gone) is None
    for kept in (young, old_running, old_queued):
        assert await db.get_generation(database, kept) is not None
    assert await images(database) == {young}


async def test_pruning_works_in_batches_and_is_idempotent(
    database: Database, new_job: MakeJob
) -> None:
    for _ in range(7):
        await job(database, new_job, days_ago=10, status="done")
    pruned = await db.prune_history(database, older_than=NOON, batch=3)
    assert pruned.generations == 7
    again = await db.prune_history(database, older_than=NOON, batch=3)
    assert again.generations == 0 and again.unreferenced == ()
    async with database.readers() as session:
        assert await session.scalar(select(func.count()).select_from(db.Generation)) == 0
