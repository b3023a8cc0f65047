"""What the web gallery reads: stored images with their generation, newest first, by server or
member, searched by prompt (SQLite FTS5, migration ``0004_gallery_search``), an image's parent
chain, whether a server's gallery is open to its members, and the generation of its links.

Every listing is scoped to one server (or, for direct messages, to one member's DMs) in SQL:
the web layer cannot forget the scope, so a link for one server never lists another's images.
Pages are keyset-paged (a cursor of the last row's time and id), so page 50 costs what page 1
costs and a new image never shifts what "older" shows.

Each function opens its own short transaction, like ``db.queries``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re

from sqlalchemy import ColumnElement, Integer, and_, literal_column, or_, select, table, text
from sqlalchemy.ext.asyncio import AsyncSession

from db.database import Database
from db.models import Generation, GuildSettings, ImageRecord
from db.queries.common import as_utc
from db.queries.guild import settings_row

log = logging.getLogger(__name__)

DEFAULT_PAGE = 50
MAX_PAGE = 100
# Search text: at most this many words, each at most this long (a query is never a workload).
MAX_TERMS = 8
MAX_TERM_CHARS = 40
MAX_CHAIN = 25
# SQLite integers are 64-bit signed: a larger number from a URL would fail to bind.
MAX_ID = 2**63 - 1
_WORD = re.compile(r"\w+", re.UNICODE)
_CURSOR = re.compile(r"^(?P<us>[0-9]{1,20})-(?P<id>[0-9]{1,19})$")


@dataclasses.dataclass(frozen=True)
class GalleryEntry:
    """A stored image and the generation that made it."""

    image: ImageRecord
    generation: Generation


@dataclasses.dataclass(frozen=True)
class GalleryPage:
    """One page, newest first; ``next_cursor`` opens the older images (None: this is the last)."""

    entries: list[GalleryEntry]
    next_cursor: str | None


@dataclasses.dataclass(frozen=True)
class ChainLink:
    """A generation in an image's family; ``image`` None when it has no stored image (any more)."""

    generation: Generation
    image: ImageRecord | None


def search_terms(query: str | None) -> list[str]:
    """The words of a search box's text, as the index sees them (letters and digits)."""
    if not query:
        return []
    words = [w[:MAX_TERM_CHARS] for w in _WORD.findall(query)]
    return words[:MAX_TERMS]


def fts_match(terms: list[str]) -> str | None:
    """An FTS5 MATCH expression finding rows with every term (the last one as a prefix, so
    results narrow while typing). Terms are quoted, so no user text is ever FTS syntax."""
    if not terms:
        return None
    quoted = [f'"{t}"' for t in terms]
    quoted[-1] += "*"
    return " ".join(quoted)


def _cursor_of(image: ImageRecord) -> str:
    stamp = as_utc(image.created_at)
    micros = int((stamp - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) / dt.timedelta(microseconds=1))
    return f"{micros}-{image.id}"


def parse_cursor(cursor: str | None) -> tuple[dt.datetime, int] | None:
    """A cursor from a URL, or None when there is none or it is not one of ours."""
    if not cursor:
        return None
    match = _CURSOR.match(cursor)
    if match is None:
        return None
    try:
        stamp = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=int(match["us"]))
    except OverflowError:
        return None
    image_id = int(match["id"])
    return (stamp, image_id) if image_id <= MAX_ID else None


def _scope(guild_id: int | None, user_id: int | None) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]]
    if guild_id is None:
        if user_id is None:
            raise ValueError("a gallery of direct messages belongs to one member: give user_id")
        where = [ImageRecord.guild_id.is_(None)]
    else:
        where = [ImageRecord.guild_id == guild_id]
    if user_id is not None:
        where.append(ImageRecord.user_id == user_id)
    return where


def _search_filter(session: AsyncSession, terms: list[str]) -> ColumnElement[bool]:
    if session.get_bind().dialect.name == "sqlite":
        ids = (
            select(literal_column("rowid", Integer))
            .select_from(table("generations_fts"))
            .where(text("generations_fts MATCH :match").bindparams(match=fts_match(terms)))
        )
        return Generation.id.in_(ids)
    # Other databases have no index from 0004: a plain case-insensitive scan.
    return and_(*(Generation.prompt.ilike(f"%{t}%") for t in terms))


async def list_gallery(
    db: Database,
    *,
    guild_id: int | None,
    user_id: int | None = None,
    search: str | None = None,
    before: str | None = None,
    limit: int = DEFAULT_PAGE,
) -> GalleryPage:
    """A page of stored images of one server (``guild_id`` None: one member's DMs, which needs
    ``user_id``), only ``user_id``'s when given, only prompts with every word of ``search``."""
    limit = max(1, min(limit, MAX_PAGE))
    where = _scope(guild_id, user_id)
    position = parse_cursor(before)
    if position is not None:
        stamp, image_id = position
        where.append(
            or_(
                ImageRecord.created_at < stamp,
                and_(ImageRecord.created_at == stamp, ImageRecord.id < image_id),
            )
        )
    terms = search_terms(search)
    async with db.readers() as session:
        if terms:
            where.append(_search_filter(session, terms))
        rows = (
            await session.execute(
                select(ImageRecord, Generation)
                .join(Generation, Generation.job_key == ImageRecord.job_key)
                .where(*where)
                .order_by(ImageRecord.created_at.desc(), ImageRecord.id.desc())
                .limit(limit + 1)
            )
        ).all()
    entries = [GalleryEntry(image, generation) for image, generation in rows[:limit]]
    more = len(rows) > limit
    return GalleryPage(entries, _cursor_of(entries[-1].image) if more and entries else None)


async def get_entry(db: Database, image_id: int) -> GalleryEntry | None:
    """A stored image by its id, with its generation; None if there is no such image."""
    async with db.readers() as session:
        row = (
            await session.execute(
                select(ImageRecord, Generation)
                .join(Generation, Generation.job_key == ImageRecord.job_key)
                .where(ImageRecord.id == image_id)
            )
        ).first()
    return None if row is None else GalleryEntry(row[0], row[1])


async def lineage(
    db: Database, generation: Generation, *, limit: int = MAX_CHAIN
) -> list[ChainLink]:
    """The generation's parents (variations, edits), nearest first, in the same server (or DMs)
    only; stops at ``limit`` and on a loop in damaged data."""
    chain: list[ChainLink] = []
    seen = {generation.job_key}
    parent_key = generation.parent_key
    async with db.readers() as session:
        while parent_key and parent_key not in seen and len(chain) < limit:
            seen.add(parent_key)
            row = (
                await session.execute(
                    select(Generation, ImageRecord)
                    .outerjoin(ImageRecord, ImageRecord.job_key == Generation.job_key)
                    .where(Generation.job_key == parent_key)
                )
            ).first()
            if row is None or row[0].guild_id != generation.guild_id:
                break
            chain.append(ChainLink(row[0], row[1]))
            parent_key = row[0].parent_key
    return chain


async def children(db: Database, generation: Generation, *, limit: int = 12) -> list[ChainLink]:
    """Images made from this one (its variations), newest first, with a stored image only."""
    async with db.readers() as session:
        rows = (
            await session.execute(
                select(Generation, ImageRecord)
                .join(ImageRecord, ImageRecord.job_key == Generation.job_key)
                .where(
                    Generation.parent_key == generation.job_key,
                    (
                        Generation.guild_id.is_(None)
                        if generation.guild_id is None
                        else Generation.guild_id == generation.guild_id
                    ),
                )
                .order_by(ImageRecord.created_at.desc(), ImageRecord.id.desc())
                .limit(limit)
            )
        ).all()
    return [ChainLink(g, i) for g, i in rows]


async def scrub_search_index(db: Database) -> None:
    """Merge the search index so that deleted prompts leave no words in it, then checkpoint.

    FTS5 records a deletion as a marker beside the old entry, and the words stay readable in
    ``generations_fts_data`` until the segments are merged; ``optimize`` merges them all. Run
    after /forget-me and after retention, not after every delete: it rewrites the whole index.
    """
    if db.engine.url.get_backend_name() != "sqlite":
        return
    async with db.sessions.begin() as session:
        await session.execute(
            text("INSERT INTO generations_fts(generations_fts) VALUES ('optimize')")
        )
    await db.checkpoint()


async def gallery_public(db: Database, guild_id: int | None) -> bool:
    """Whether members of this server may see its whole gallery (DMs: never anyone else's)."""
    if guild_id is None:
        return False
    async with db.readers() as session:
        value = await session.scalar(
            select(GuildSettings.gallery_public).where(GuildSettings.guild_id == guild_id)
        )
    return bool(value)


async def set_gallery_public(
    db: Database, guild_id: int, public: bool, *, now: dt.datetime | None = None
) -> bool:
    """Open (or close) a server's gallery to its members; returns whether it changed."""
    now = as_utc(now)
    async with db.sessions.begin() as session:
        row = await settings_row(session, guild_id, now)
        changed = bool(row.gallery_public) != public
        row.gallery_public = public
        row.updated_at = now
    if changed:
        log.info("gallery of guild %s is now %s", guild_id, "public" if public else "private")
    return changed


async def gallery_links_epoch(db: Database, guild_id: int | None) -> int:
    """The generation of a server's gallery links (0 until an admin first revoked them; DMs:
    always 0, no one can revoke a member's DM links but the key)."""
    if guild_id is None:
        return 0
    async with db.readers() as session:
        value = await session.scalar(
            select(GuildSettings.gallery_links_epoch).where(GuildSettings.guild_id == guild_id)
        )
    return int(value or 0)


async def revoke_gallery_links(
    db: Database, guild_id: int, *, now: dt.datetime | None = None
) -> int:
    """End every gallery link of a server given out so far; returns the new generation."""
    now = as_utc(now)
    async with db.sessions.begin() as session:
        row = await settings_row(session, guild_id, now)
        row.gallery_links_epoch = int(row.gallery_links_epoch or 0) + 1
        row.updated_at = now
        epoch = row.gallery_links_epoch
    log.info("gallery links of guild %s revoked (generation %d)", guild_id, epoch)
    return epoch
