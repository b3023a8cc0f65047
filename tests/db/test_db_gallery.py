"""db.gallery: listing by server and member, keyset pages, prompt search (FTS5 kept in step by
triggers, through migration 0004), parent chains, and the gallery_public switch."""

from __future__ import annotations

import datetime as dt
import itertools
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import delete, select, text

import db
from db import Database, NewGeneration, alembic_config
from db import gallery as g
from tests.db.conftest import GUILD, NOON, OTHER_GUILD, USER

OTHER_USER = 555_555_555_555_555_555
_keys = itertools.count(7_000_000_000_000_000_000)
_minutes = itertools.count(1)


async def seed(
    database: Database,
    prompt: str,
    *,
    guild_id: int | None = GUILD,
    user_id: int = USER,
    parent_key: str | None = None,
    stored: bool = True,
) -> str:
    """A finished generation (and its stored image row unless ``stored`` is False), each one
    a minute newer than the last; returns its job key."""
    key = str(next(_keys))
    when = NOON + dt.timedelta(minutes=next(_minutes))
    await db.reserve_generation(
        database,
        NewGeneration(
            key, user_id, 1, guild_id, prompt, "none", "1:1", "fast", parent_key=parent_key
        ),
        daily_quota=None,
        max_queued=None,
        now=when,
    )
    if stored:
        await db.add_image(
            database,
            job_key=key,
            sha256=f"{int(key):064x}"[-64:],
            size=100,
            width=64,
            height=64,
            thumb_size=10,
            user_id=user_id,
            guild_id=guild_id,
            now=when,
        )
    return key


async def seed_old(database: Database, prompt: str) -> str:
    """``seed`` as a bot of schema 0003 wrote it: plain SQL with the columns that schema has
    (today's query functions read today's columns, which an old schema lacks)."""
    key = str(next(_keys))
    when = (NOON + dt.timedelta(minutes=next(_minutes))).replace(tzinfo=None)
    async with database.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO generations (job_key, kind, guild_id, channel_id, user_id, prompt, "
                "style, aspect, mode, status, charged, quota_day, created_at) VALUES (:key, "
                "'imagine', :guild, 1, :user, :prompt, 'none', '1:1', 'fast', 'queued', 0, "
                ":day, :when)"
            ),
            {
                "key": key,
                "guild": GUILD,
                "user": USER,
                "prompt": prompt,
                "day": when.date(),
                "when": when,
            },
        )
        await conn.execute(
            text(
                "INSERT INTO images (job_key, sha256, size, width, height, thumb_size, guild_id, "
                "user_id, created_at) VALUES (:key, :sha, 100, 64, 64, 10, :guild, :user, :when)"
            ),
            {
                "key": key,
                "sha": f"{int(key):064x}"[-64:],
                "guild": GUILD,
                "user": USER,
                "when": when,
            },
        )
    return key


def prompts(page: g.GalleryPage) -> list[str]:
    return [e.generation.prompt for e in page.entries]


async def test_a_server_lists_its_own_images_newest_first(database: Database) -> None:
    await seed(database, "a red fox")
    await seed(database, "a blue whale", user_id=OTHER_USER)
    await seed(database, "elsewhere", guild_id=OTHER_GUILD)
    await seed(database, "a secret in a DM", guild_id=None)
    await seed(database, "no stored image", stored=False)

    page = await g.list_gallery(database, guild_id=GUILD)
    assert prompts(page) == ["a blue whale", "a red fox"]
    assert page.next_cursor is None
    mine = await g.list_gallery(database, guild_id=GUILD, user_id=USER)
    assert prompts(mine) == ["a red fox"]
    dms = await g.list_gallery(database, guild_id=None, user_id=USER)
    assert prompts(dms) == ["a secret in a DM"]
    assert prompts(await g.list_gallery(database, guild_id=None, user_id=OTHER_USER)) == []
    with pytest.raises(ValueError, match="user_id"):
        await g.list_gallery(database, guild_id=None)


async def test_pages_walk_back_without_overlap_and_bad_cursors_start_over(
    database: Database,
) -> None:
    for n in range(7):
        await seed(database, f"image {n}")
    seen: list[str] = []
    cursor = None
    sizes = []
    while True:
        page = await g.list_gallery(database, guild_id=GUILD, before=cursor, limit=3)
        sizes.append(len(page.entries))
        seen += prompts(page)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sizes == [3, 3, 1]
    assert seen == [f"image {n}" for n in reversed(range(7))]
    for junk in ("", "x", "1-", "-1", "9" * 30 + "-1", "1-" + "9" * 19, "1-2; DROP TABLE images"):
        page = await g.list_gallery(database, guild_id=GUILD, before=junk, limit=3)
        assert prompts(page)[0] == "image 6"


async def test_search_narrows_by_every_word_prefix_case_and_accents(database: Database) -> None:
    await seed(database, "A Red Fox in the snow")
    await seed(database, "a red car at night")
    await seed(database, "Café terrace at night")
    await seed(database, "red fox, but elsewhere", guild_id=OTHER_GUILD)

    async def search(q: str) -> list[str]:
        return sorted(prompts(await g.list_gallery(database, guild_id=GUILD, search=q)))

    assert await search("red") == ["A Red Fox in the snow", "a red car at night"]
    assert await search("RED fox") == ["A Red Fox in the snow"]
    assert await search("nig") == ["Café terrace at night", "a red car at night"]
    assert await search("cafe") == ["Café terrace at night"]
    assert await search("whale") == []
    # FTS syntax in the box is just text: no error, no widening.
    for hostile in ('"', "red OR car", "NEAR(red fox)", "fox*", "-red", "red AND", "^red", ":"):
        await search(hostile)
    assert await search("fox OR car") == []
    # Nothing searchable at all: the unfiltered page.
    assert len(await search("!!! ...")) == 3


async def test_the_index_follows_updates_and_deletes(database: Database) -> None:
    key = await seed(database, "a lighthouse at dawn")
    async with database.sessions.begin() as session:
        row = await session.scalar(select(db.Generation).where(db.Generation.job_key == key))
        assert row is not None
        row.prompt = "a windmill at dusk"
    assert prompts(await g.list_gallery(database, guild_id=GUILD, search="lighthouse")) == []
    assert prompts(await g.list_gallery(database, guild_id=GUILD, search="windmill")) == [
        "a windmill at dusk"
    ]
    async with database.sessions.begin() as session:
        await session.execute(delete(db.Generation).where(db.Generation.job_key == key))
    async with database.engine.connect() as conn:
        left = (
            await conn.exec_driver_sql(
                "SELECT count(*) FROM generations_fts WHERE generations_fts MATCH 'windmill'"
            )
        ).scalar()
    assert left == 0


async def test_parent_chain_nearest_first_and_children(database: Database) -> None:
    root = await seed(database, "root")
    child = await seed(database, "child", parent_key=root)
    grandchild = await seed(database, "grandchild", parent_key=child)
    await seed(database, "sibling", parent_key=root)
    lost = await seed(database, "lost parent", stored=False)
    orphan = await seed(database, "orphan", parent_key=lost)

    entry = (await g.list_gallery(database, guild_id=GUILD, search="grandchild")).entries[0]
    chain = await g.lineage(database, entry.generation)
    assert [link.generation.job_key for link in chain] == [child, root]
    assert all(link.image is not None for link in chain)

    root_entry = (await g.list_gallery(database, guild_id=GUILD, search="root")).entries[0]
    assert [c.generation.prompt for c in await g.children(database, root_entry.generation)] == [
        "sibling",
        "child",
    ]
    orphan_entry = (await g.list_gallery(database, guild_id=GUILD, search="orphan")).entries[0]
    (link,) = await g.lineage(database, orphan_entry.generation)
    assert link.generation.job_key == lost and link.image is None
    found = await g.get_entry(database, entry.image.id)
    assert found is not None and found.generation.job_key == grandchild
    assert orphan_entry.generation.job_key == orphan
    assert await g.get_entry(database, 999_999) is None


async def test_gallery_public_is_off_until_an_admin_turns_it_on(database: Database) -> None:
    assert await g.gallery_public(database, GUILD) is False
    assert await g.gallery_public(database, None) is False
    assert await g.set_gallery_public(database, GUILD, True) is True
    assert await g.set_gallery_public(database, GUILD, True) is False
    assert await g.gallery_public(database, GUILD) is True
    assert await g.gallery_public(database, OTHER_GUILD) is False
    # The row it made keeps following the bot's default limits.
    config = await db.get_guild_config(database, GUILD, default_quota=7, default_max_queued=2)
    assert (config.daily_quota, config.custom_quota) == (7, False)
    assert await g.set_gallery_public(database, GUILD, False) is True
    assert await g.gallery_public(database, GUILD) is False


async def test_revoking_a_servers_links_moves_its_link_generation_on(database: Database) -> None:
    """issue 20 item 9: the counter that signed gallery links carry; revoking moves it on, and
    links of an older generation stop working."""
    assert await g.gallery_links_epoch(database, GUILD) == 0
    assert await g.gallery_links_epoch(database, None) == 0  # DMs: nothing to revoke
    assert await g.revoke_gallery_links(database, GUILD) == 1
    assert await g.revoke_gallery_links(database, GUILD) == 2
    assert await g.gallery_links_epoch(database, GUILD) == 2
    assert await g.gallery_links_epoch(database, OTHER_GUILD) == 0
    assert await g.gallery_public(database, GUILD) is False  # nothing else changed
    config = await db.get_guild_config(database, GUILD, default_quota=7, default_max_queued=2)
    assert (config.daily_quota, config.custom_quota) == (7, False)


def _fts_tables(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn, conn:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE name LIKE 'generations_fts%'"
        ).fetchall()
    return {name for (name,) in rows}


async def test_upgrading_a_database_with_rows_makes_them_searchable(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    url = f"sqlite+aiosqlite:///{path}"
    database = await Database.open(url, migrate=False)
    try:
        await database.migrate("0003_image_store")
        await seed_old(database, "an old lighthouse")
        await seed_old(database, "an old barn")
        await database.migrate("head")
        page = await g.list_gallery(database, guild_id=GUILD, search="lighthouse")
        assert prompts(page) == ["an old lighthouse"]
        # Rows written after the upgrade are indexed by the triggers.
        await seed(database, "a new lighthouse")
        page = await g.list_gallery(database, guild_id=GUILD, search="lighthouse")
        assert prompts(page) == ["a new lighthouse", "an old lighthouse"]
        await g.set_gallery_public(database, GUILD, True)
    finally:
        await database.close()
    assert {"generations_fts", "generations_fts_ai", "generations_fts_au"} <= _fts_tables(path)

    cfg = alembic_config(url)
    command.downgrade(cfg, "0003_image_store")
    assert _fts_tables(path) == set()
    with closing(sqlite3.connect(path)) as conn, conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(guild_settings)")}
        count = conn.execute("SELECT count(*) FROM generations").fetchone()[0]
    assert "gallery_public" not in columns
    assert count == 3
    # The old schema still takes rows (no trigger left behind pointing at a dropped table).
    database = await Database.open(url, migrate=False)
    try:
        await seed_old(database, "written by the older bot")
        await database.migrate("head")
        page = await g.list_gallery(database, guild_id=GUILD, search="older")
        assert prompts(page) == ["written by the older bot"]
        assert await g.gallery_public(database, GUILD) is False
    finally:
        await database.close()
