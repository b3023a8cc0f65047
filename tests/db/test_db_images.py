"""Stored-image rows: one per job, retention order, what a Delete and an erase leave behind,
and migration 0003 on a database that already holds history."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from alembic import command

from db import (
    Database,
    NewGeneration,
    add_image,
    alembic_config,
    complete_generation,
    delete_image,
    erase_user,
    fail_generation,
    forget_images,
    get_generation,
    get_image,
    image_references,
    image_totals,
    images_oldest_first,
    quota_status,
    reserve_generation,
    user_history,
)

NOON = dt.datetime(2025, 3, 14, 12, 0, tzinfo=dt.UTC)
GUILD = 111_111_111_111_111_111
USER = 333_333_333_333_333_333
OTHER_USER = 555_555_555_555_555_555
SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_C = "c" * 64

MakeJob = Callable[..., NewGeneration]


async def finished_job(
    db: Database, new_job: MakeJob, *, user_id: int = USER, now: dt.datetime = NOON
) -> str:
    gen, created = await reserve_generation(
        db, new_job(user_id=user_id), daily_quota=10, max_queued=None, now=now
    )
    assert created
    await complete_generation(db, gen.job_key, message_id=1, now=now)
    return gen.job_key


async def store(
    db: Database,
    job_key: str,
    sha256: str,
    *,
    user_id: int = USER,
    now: dt.datetime = NOON,
    size: int = 1000,
) -> str | None:
    _row, replaced = await add_image(
        db,
        job_key=job_key,
        sha256=sha256,
        size=size,
        width=64,
        height=64,
        thumb_size=100,
        user_id=user_id,
        guild_id=GUILD,
        now=now,
    )
    return replaced


async def test_an_image_is_recorded_once_per_job(database: Database, new_job: MakeJob) -> None:
    key = await finished_job(database, new_job)
    assert await get_image(database, key) is None
    assert await store(database, key, SHA_A) is None
    row = await get_image(database, key)
    assert row is not None
    assert (row.sha256, row.size, row.width, row.height, row.thumb_size) == (
        SHA_A,
        1000,
        64,
        64,
        100,
    )
    assert (row.user_id, row.guild_id, row.created_at) == (USER, GUILD, NOON)
    # The same result delivered twice: still one row, nothing to delete.
    assert await store(database, key, SHA_A) is None
    assert await image_references(database, SHA_A) == 1
    # The job re-run after a restart made other bytes: the old file is free to go.
    assert await store(database, key, SHA_B) == SHA_A
    assert (await get_image(database, key)).sha256 == SHA_B  # type: ignore[union-attr]
    assert await image_totals(database) == (1, 1100)


async def test_a_file_shared_by_two_jobs_stays_until_the_last_goes(
    database: Database, new_job: MakeJob
) -> None:
    first = await finished_job(database, new_job)
    second = await finished_job(database, new_job)
    await store(database, first, SHA_A)
    await store(database, second, SHA_A)  # identical bytes: one file, two rows
    assert await image_references(database, SHA_A) == 2
    assert await delete_image(database, first) is None  # the second still needs the file
    assert await delete_image(database, second) == SHA_A
    assert await delete_image(database, second) is None  # already gone: nothing to do
    # The history rows stay: Delete removes the image, not the record that it was made.
    assert await get_generation(database, first) is not None


async def test_retention_lists_oldest_first_and_forgets_swept_files(
    database: Database, new_job: MakeJob
) -> None:
    keys = []
    for hours, sha in ((3, SHA_C), (1, SHA_A), (2, SHA_B)):
        key = await finished_job(database, new_job)
        await store(database, key, sha, now=NOON + dt.timedelta(hours=hours))
        keys.append(key)
    rows = await images_oldest_first(database)
    assert [r.sha256 for r in rows] == [SHA_A, SHA_B, SHA_C]
    older = await images_oldest_first(database, before=NOON + dt.timedelta(hours=2, minutes=30))
    assert [r.sha256 for r in older] == [SHA_A, SHA_B]
    assert [r.sha256 for r in await images_oldest_first(database, limit=1)] == [SHA_A]

    assert await forget_images(database, [SHA_A, SHA_B, "f" * 64]) == 2
    assert [r.sha256 for r in await images_oldest_first(database)] == [SHA_C]
    assert all([await get_generation(database, key) for key in keys])  # history stays


async def test_erasing_a_member_removes_their_images_and_history_only(
    database: Database, new_job: MakeJob
) -> None:
    mine_done = await finished_job(database, new_job)
    mine_shared = await finished_job(database, new_job)
    failed, _ = await reserve_generation(
        database, new_job(), daily_quota=10, max_queued=None, now=NOON
    )
    await fail_generation(
        database, failed.job_key, status="failed", error="GPU out of memory", now=NOON
    )
    running, _ = await reserve_generation(
        database, new_job(), daily_quota=10, max_queued=None, now=NOON
    )
    theirs = await finished_job(database, new_job, user_id=OTHER_USER)
    await store(database, mine_done, SHA_A)
    await store(database, mine_shared, SHA_B)
    await store(database, theirs, SHA_B, user_id=OTHER_USER)  # same bytes as one of mine
    quota_before = await quota_status(
        database, guild_id=GUILD, user_id=USER, daily_quota=10, now=NOON
    )

    erased = await erase_user(database, USER)

    assert (erased.generations, erased.images, erased.kept_active) == (3, 2, 1)
    assert erased.unreferenced == (SHA_A,)  # SHA_B is still the other member's image
    for key in (mine_done, mine_shared, failed.job_key):
        assert await get_generation(database, key) is None
        assert await get_image(database, key) is None
    # The job still running keeps its row, so its task can finish; the other member is intact.
    assert await get_generation(database, running.job_key) is not None
    assert (await get_image(database, theirs)).sha256 == SHA_B  # type: ignore[union-attr]
    rows, total = await user_history(database, user_id=USER, guild_id=GUILD, page=1)
    assert [r.job_key for r in rows] == [running.job_key] and total == 1
    # Erasing history never hands back quota already used today.
    assert (
        await quota_status(database, guild_id=GUILD, user_id=USER, daily_quota=10, now=NOON)
        == quota_before
    )
    assert (await erase_user(database, USER)).generations == 0


async def test_a_variation_row_records_its_parent_and_strength(
    database: Database, new_job: MakeJob
) -> None:
    parent = await finished_job(database, new_job)
    gen, _ = await reserve_generation(
        database,
        new_job(kind="variation", parent_key=parent, strength=0.35),
        daily_quota=None,
        max_queued=None,
        now=NOON,
    )
    row = await get_generation(database, gen.job_key)
    assert row is not None and (row.parent_key, row.strength) == (parent, 0.35)
    assert (await get_generation(database, parent)).strength is None  # type: ignore[union-attr]


def columns(path: Path, table: str) -> set[str]:
    with closing(sqlite3.connect(path)) as conn, conn:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def table_names(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn, conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


def history(path: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(
            "SELECT job_key, user_id, prompt, status, parent_key, seed_used FROM generations "
            "ORDER BY job_key"
        ).fetchall()


async def test_0003_upgrades_a_database_with_history_and_downgrades_it_intact(
    tmp_path: Path,
) -> None:
    path = tmp_path / "live.db"
    url = f"sqlite+aiosqlite:///{path}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "0002_job_results")
    with closing(sqlite3.connect(path)) as conn, conn:
        for index, status in enumerate(("done", "failed", "running", "delivering")):
            conn.execute(
                "INSERT INTO generations (job_key, kind, parent_key, user_id, prompt, style, "
                "aspect, mode, status, seed_used, charged, quota_day, created_at) "
                "VALUES (?, 'imagine', ?, ?, ?, 'none', '1:1', 'standard', ?, ?, 1, "
                "'2025-03-14', '2025-03-14 12:00:00')",
                (f"10{index}", "100" if index else None, USER, f"prompt {index}", status, index),
            )
    before = history(path)
    assert len(before) == 4

    command.upgrade(cfg, "head")
    assert "images" in table_names(path)
    assert "strength" in columns(path, "generations")
    assert history(path) == before
    db = await Database.open(url)
    try:
        row = await get_generation(db, "101")
        assert row is not None and row.strength is None and row.parent_key == "100"
        await store(db, "100", SHA_A)
        assert (await get_image(db, "100")).sha256 == SHA_A  # type: ignore[union-attr]
    finally:
        await db.close()

    command.downgrade(cfg, "0002_job_results")
    assert "images" not in table_names(path)
    assert "strength" not in columns(path, "generations")
    assert history(path) == before

    command.upgrade(cfg, "head")  # and up again, with an empty images table
    assert history(path) == before
    db = await Database.open(url)
    try:
        assert await image_totals(db) == (0, 0)
    finally:
        await db.close()
