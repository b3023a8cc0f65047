"""Migrations: the real Alembic commands, empty -> head -> base -> head, and migrate-on-open."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory

from db import (
    Database,
    JobResultFields,
    NewGeneration,
    SchemaTooNew,
    alembic_config,
    record_result,
    reserve_generation,
    set_message,
    unfinished_generations,
)
from db.models import Base

TABLES = {"guild_settings", "styles", "generations", "quota_usage", "images"}
REPO = Path(__file__).resolve().parents[2]


def tables(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn, conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    # The gallery's FTS5 tables (a virtual table and its shadows) are checked in
    # tests/db/test_db_gallery.py; here only the tables the models describe.
    return {name for (name,) in rows if not name.startswith("generations_fts")} - {
        "sqlite_sequence"
    }


def version(path: Path) -> str | None:
    with closing(sqlite3.connect(path)) as conn, conn:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


def head() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, f"migrations must have one head, found {heads}"
    return heads[0]


def test_upgrade_downgrade_upgrade_with_alembic_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # From another cwd: the config must not depend on where the process started.
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "nested" / "m.db"
    cfg = alembic_config(f"sqlite+aiosqlite:///{path}")

    command.upgrade(cfg, "head")
    assert tables(path) == TABLES | {"alembic_version"}
    assert version(path) == head()

    command.downgrade(cfg, "base")
    assert tables(path) == {"alembic_version"}
    assert version(path) is None

    command.upgrade(cfg, "head")
    assert tables(path) == TABLES | {"alembic_version"}
    assert version(path) == head()


def test_models_match_the_migrations(tmp_path: Path) -> None:
    """`alembic check`: a model change without a migration fails here, not in production."""
    cfg = alembic_config(f"sqlite+aiosqlite:///{tmp_path}/c.db")
    command.upgrade(cfg, "head")
    command.check(cfg)
    assert set(Base.metadata.tables) == TABLES


def test_every_revision_downgrades_and_upgrades_step_by_step(tmp_path: Path) -> None:
    cfg = alembic_config(f"sqlite+aiosqlite:///{tmp_path}/s.db")
    revisions = list(ScriptDirectory.from_config(cfg).walk_revisions("base", "heads"))
    for _ in revisions:
        command.upgrade(cfg, "+1")
    assert version(tmp_path / "s.db") == head()
    for _ in revisions:
        command.downgrade(cfg, "-1")
    assert version(tmp_path / "s.db") is None


def test_alembic_command_line_from_another_directory(tmp_path: Path) -> None:
    path = tmp_path / "cli" / "imagine.db"
    env = {
        **os.environ,
        "IMAGINE_DATABASE_URL": f"sqlite+aiosqlite:///{path}",
        "PYTHONPATH": "",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alembic",
            "-c",
            str(REPO / "db" / "alembic.ini"),
            "upgrade",
            "head",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert version(path) == head()


async def test_open_creates_the_folder_migrates_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "does" / "not" / "exist" / "imagine.db"
    db = await Database.open(f"sqlite+aiosqlite:///{path}")
    try:
        assert version(path) == head()
        async with db.engine.connect() as conn:
            mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
            busy = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar()
        assert mode == "wal"
        assert busy >= 1000
    finally:
        await db.close()
    assert tables(path) == TABLES | {"alembic_version"}


async def test_reopening_keeps_data_for_a_restarted_bot(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/twice.db"
    db = await Database.open(url)
    job = NewGeneration("987654321", 1, 2, 3, "a lighthouse", "none", "16:9", "fast")
    await reserve_generation(db, job, daily_quota=5, max_queued=None)
    await set_message(db, "987654321", message_id=55, interaction_token="tok")
    await db.close()

    db = await Database.open(url)
    try:
        (row,) = await unfinished_generations(db)
        assert (row.job_key, row.prompt, row.message_id, row.interaction_token) == (
            "987654321",
            "a lighthouse",
            55,
            "tok",
        )
    finally:
        await db.close()
    assert version(tmp_path / "twice.db") == head()


async def test_a_delivering_job_survives_a_downgrade_as_running(tmp_path: Path) -> None:
    """0002 adds the "delivering" status; the older schema's bot resumes "running" rows."""
    path = tmp_path / "down.db"
    url = f"sqlite+aiosqlite:///{path}"
    db = await Database.open(url)
    job = NewGeneration("123", 1, 2, 3, "a lighthouse", "none", "1:1", "fast")
    await reserve_generation(db, job, daily_quota=5, max_queued=None)
    result = JobResultFields(5, 64, 64, 8, 1.0, "fast", "tiny", 0.1, 0.2)
    await record_result(db, "123", result)
    await db.close()

    command.downgrade(alembic_config(url), "0001")
    with closing(sqlite3.connect(path)) as conn, conn:
        status, seed = conn.execute("SELECT status, seed_used FROM generations").fetchone()
        columns = {row[1] for row in conn.execute("PRAGMA table_info(generations)")}
    assert (status, seed) == ("running", 5) and "result_at" not in columns

    command.upgrade(alembic_config(url), "head")
    db = await Database.open(url)
    try:
        (row,) = await unfinished_generations(db)
        assert (row.status, row.seed_used, row.result_at) == ("running", 5, None)
    finally:
        await db.close()


async def test_open_without_migrate_leaves_the_schema_alone(tmp_path: Path) -> None:
    path = tmp_path / "raw.db"
    db = await Database.open(f"sqlite+aiosqlite:///{path}", migrate=False)
    try:
        async with db.engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
    finally:
        await db.close()
    assert tables(path) == set()


async def test_open_brings_an_old_database_up_to_head(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    url = f"sqlite+aiosqlite:///{path}"
    command.upgrade(alembic_config(url), "head")
    command.downgrade(alembic_config(url), "base")
    db = await Database.open(url)
    await db.close()
    assert version(path) == head()
    assert tables(path) == TABLES | {"alembic_version"}


async def test_a_schema_from_a_newer_bot_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    url = f"sqlite+aiosqlite:///{path}"
    await (await Database.open(url)).close()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE alembic_version SET version_num = 'from_the_future'")

    with pytest.raises(SchemaTooNew, match=r"from_the_future.*newer version"):
        await Database.open(url)


def test_job_specs_map_every_row_written_before_them(tmp_path: Path) -> None:
    """``0007_job_specs``: rows of 0005 get their kind and inputs (``bot.imagine.spec``'s
    table): Vary rows (a strength) become ``vary`` with their parent's image as input, old
    Variations rows stay ``variation``, edits get the image rows they kept, in order."""
    path = tmp_path / "spec.db"
    cfg = alembic_config(f"sqlite+aiosqlite:///{path}")
    command.upgrade(cfg, "0006_gallery_link_epoch")
    rows = [
        # job_key, kind, parent_key, strength
        ("1", "imagine", None, None),
        ("2", "variation", "1", 0.7),  # Vary (Strong)
        ("3", "variation", "1", None),  # the old Variations button
        ("4", "remix", "1", 0.7),
        ("5", "edit", None, None),  # an edit that kept two inputs
        ("6", "edit", "1", None),  # an edit whose inputs were never kept
        ("7", "reroll", "1", None),
    ]
    with closing(sqlite3.connect(path)) as conn, conn:
        for key, kind, parent, strength in rows:
            conn.execute(
                "INSERT INTO generations (job_key, kind, parent_key, strength, user_id, prompt,"
                " style, aspect, mode, status, charged, quota_day, created_at)"
                " VALUES (?, ?, ?, ?, 1, 'p', 'none', '1:1', 'fast', 'queued', 1,"
                " '2026-12-01', '2026-12-01 10:00:00')",
                (key, kind, parent, strength),
            )
        for key in ("5:in2", "5:in1", "50:in1"):  # 50:in1 belongs to another job
            conn.execute(
                "INSERT INTO images (job_key, sha256, size, width, height, thumb_size, user_id,"
                " created_at) VALUES (?, ?, 1, 1, 1, 1, 1, '2026-12-01 10:00:00')",
                (key, key.replace(":", "-")),
            )
    command.upgrade(cfg, "0007_job_specs")
    with closing(sqlite3.connect(path)) as conn, conn:
        found = dict(
            (key, (kind, json.loads(inputs)))
            for key, kind, inputs in conn.execute(
                "SELECT job_key, kind, inputs FROM generations ORDER BY job_key"
            )
        )
    assert found == {
        "1": ("imagine", []),
        "2": ("vary", ["1"]),
        "3": ("variation", []),
        "4": ("remix", ["1"]),
        "5": ("edit", ["5:in1", "5:in2"]),
        "6": ("edit", []),
        "7": ("reroll", []),
    }
    command.downgrade(cfg, "0006_gallery_link_epoch")
    with closing(sqlite3.connect(path)) as conn, conn:
        kinds = [k for (k,) in conn.execute("SELECT kind FROM generations ORDER BY job_key")]
    assert kinds == ["imagine", "variation", "variation", "remix", "edit", "edit", "reroll"]
