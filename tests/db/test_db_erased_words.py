"""Erased prompts leave no words behind: FTS5 keeps a deleted row's tokens in its index
(``generations_fts_data``) until the index is merged, and SQLite leaves deleted bytes in free
pages unless ``secure_delete`` is on. issue 20 item 4."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text

import db
from db import Database, NewGeneration
from tests.db.conftest import NOON, USER

MakeJob = Callable[..., NewGeneration]
OTHER = 555_555_555_555_555_555
# Words nobody else writes: they must vanish from every byte of the index.
SECRET_WORDS = ("quixotryptich", "zanzibarwhorl")
SECRET_PROMPT = f"my {SECRET_WORDS[0]} under a {SECRET_WORDS[1]} moon"


async def _finished(
    database: Database, new_job: MakeJob, *, prompt: str, user_id: int, when: dt.datetime = NOON
) -> str:
    row, _ = await db.reserve_generation(
        database,
        new_job(prompt=prompt, user_id=user_id),
        daily_quota=None,
        max_queued=None,
        now=when,
    )
    await db.complete_generation(database, row.job_key, message_id=1, now=when)
    return row.job_key


async def _index_bytes(database: Database) -> bytes:
    async with database.readers() as session:
        blocks = (await session.execute(text("SELECT block FROM generations_fts_data"))).all()
    return b"".join(bytes(block) for (block,) in blocks if block is not None)


def _still_there(blob: bytes) -> list[str]:
    # Terms are prefix-compressed in the index: look for each word's tail, which is stored whole.
    return [word for word in SECRET_WORDS if word[3:].encode() in blob]


async def _some_history(database: Database, new_job: MakeJob) -> None:
    for n in range(30):  # other members' prompts, so the index has several segments
        await _finished(
            database, new_job, prompt=f"a red fox number {n} in the snow", user_id=OTHER
        )


async def test_forget_me_leaves_no_prompt_words_in_the_search_index(
    database: Database, new_job: MakeJob
) -> None:
    """issue 20 item 4: /forget-me erased the rows but the words stayed in the FTS5 index."""
    await _some_history(database, new_job)
    for _ in range(3):
        await _finished(database, new_job, prompt=SECRET_PROMPT, user_id=USER)
    assert _still_there(await _index_bytes(database)) == list(SECRET_WORDS)  # the test sees them

    assert (await db.erase_user(database, USER)).generations == 3

    assert _still_there(await _index_bytes(database)) == []
    # The other members' history is still found.
    assert "fox" in (await _index_bytes(database)).decode("latin-1")


async def test_retention_leaves_no_prompt_words_in_the_search_index(
    database: Database, new_job: MakeJob
) -> None:
    """issue 20 item 4: history retention, like /forget-me, must not leave old words behind."""
    await _some_history(database, new_job)
    await _finished(
        database, new_job, prompt=SECRET_PROMPT, user_id=USER, when=NOON - dt.timedelta(days=60)
    )
    assert _still_there(await _index_bytes(database))

    pruned = await db.prune_history(database, older_than=NOON - dt.timedelta(days=30))

    assert pruned.generations == 1
    assert _still_there(await _index_bytes(database)) == []


async def test_every_connection_overwrites_what_it_deletes(database: Database) -> None:
    """issue 20 item 4: ``secure_delete`` is set explicitly, not left to how SQLite was built."""
    async with database.sessions.begin() as session:
        assert (await session.execute(text("PRAGMA secure_delete"))).scalar() == 1
    async with database.readers() as session:
        assert (await session.execute(text("PRAGMA secure_delete"))).scalar() == 1


async def test_an_erased_prompt_is_gone_from_the_database_files(
    database: Database, new_job: MakeJob, db_url: str
) -> None:
    """issue 20 item 4: nothing of an erased prompt stays readable in the files on disk
    (the database, its write-ahead log), not only in what SQL shows."""
    await _some_history(database, new_job)
    await _finished(database, new_job, prompt=SECRET_PROMPT, user_id=USER)

    await db.erase_user(database, USER)

    assert _still_there(_files_of(db_url)) == []


def _files_of(db_url: str) -> bytes:
    path = Path(db_url.split("///", 1)[1])
    files = [Path(f"{path}{suffix}") for suffix in ("", "-wal")]
    return b"".join(file.read_bytes() for file in files if file.exists())


async def test_forget_me_keeps_what_other_members_made_from_your_images(
    database: Database, new_job: MakeJob
) -> None:
    """issue 20 item 10: README and docs/BOT.md say that /forget-me does not erase other members'
    variations of your images (they repeat your prompt); this is that behaviour."""
    mine = await _finished(database, new_job, prompt=SECRET_PROMPT, user_id=USER)
    row, _ = await db.reserve_generation(
        database,
        new_job(
            prompt=SECRET_PROMPT, user_id=OTHER, kind="variation", parent_key=mine, strength=0.7
        ),
        daily_quota=None,
        max_queued=None,
        now=NOON,
    )
    await db.erase_user(database, USER)
    assert await db.get_generation(database, mine) is None
    theirs = await db.get_generation(database, row.job_key)
    assert theirs is not None and theirs.prompt == SECRET_PROMPT
    for doc in ("README.md", "docs/BOT.md"):
        text = " ".join((Path(__file__).parents[2] / doc).read_text().split())
        assert "Images other members made from yours (Vary, Remix, Edit) are theirs" in text, doc
