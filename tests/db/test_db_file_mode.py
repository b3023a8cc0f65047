"""The SQLite file holds prompts, interaction tokens and who asked for what: it and its -wal and
-shm companions are readable by the bot's user only (0600), also when the file already existed
with looser permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import db
from db import Database

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def write_something(database: Database) -> None:
    await db.add_blocked_word(database, 1, "word")  # a write: the WAL and its index exist


async def test_a_new_database_file_and_its_wal_and_shm_are_0600(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # the usual umask: new files would be 0644
    try:
        path = tmp_path / "data" / "imagine.db"
        database = await Database.open(f"sqlite+aiosqlite:///{path}")
        try:
            await write_something(database)
            for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                assert file.exists(), file
                assert mode(file) == 0o600, (file, oct(mode(file)))
        finally:
            await database.close()
    finally:
        os.umask(old_umask)


async def test_an_existing_world_readable_database_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "imagine.db"
    database = await Database.open(f"sqlite+aiosqlite:///{path}")
    await write_something(database)
    await database.close()
    os.chmod(path, 0o644)
    database = await Database.open(f"sqlite+aiosqlite:///{path}")
    try:
        await write_something(database)
        assert mode(path) == 0o600
        for companion in (Path(f"{path}-wal"), Path(f"{path}-shm")):
            if companion.exists():
                assert mode(companion) == 0o600, companion
    finally:
        await database.close()
