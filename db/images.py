"""The image store's rows: which job each stored file belongs to, and which files may go.

The bytes live on disk in the bot's image store (``bot.store``), content-addressed by sha256;
this module never touches files. Every function that removes rows returns the sha256s that no
row references any more: those are the files the caller may delete (identical bytes are stored
once, so a file shared by two jobs stays until the last of them goes).

Each function opens its own short transaction, like ``db.queries``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Iterable, Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from db.database import Database
from db.gallery import scrub_search_index
from db.models import ACTIVE_STATUSES, Generation, ImageRecord
from db.queries.common import as_utc, rows_changed

log = logging.getLogger(__name__)

# SQLite allows 32766 bound parameters per statement (999 before 3.32); stay far below.
_CHUNK = 500


@dataclasses.dataclass(frozen=True)
class ErasedUser:
    """What erasing a member's data removed; ``unreferenced`` are the files that may go."""

    generations: int
    images: int
    unreferenced: tuple[str, ...]
    # Jobs still queued, running or delivering stay: their tasks own the rows until they end.
    kept_active: int


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


async def _unreferenced(session: AsyncSession, sha256s: Iterable[str]) -> tuple[str, ...]:
    """Those of ``sha256s`` that no images row references (inside the caller's transaction)."""
    candidates = sorted(set(sha256s))
    still: set[str] = set()
    for chunk in _chunks(candidates):
        rows = await session.scalars(
            select(ImageRecord.sha256).where(ImageRecord.sha256.in_(chunk)).distinct()
        )
        still.update(rows.all())
    return tuple(sha for sha in candidates if sha not in still)


async def add_image(
    db: Database,
    *,
    job_key: str,
    sha256: str,
    size: int,
    width: int,
    height: int,
    thumb_size: int,
    user_id: int,
    guild_id: int | None,
    now: dt.datetime | None = None,
) -> tuple[ImageRecord, str | None]:
    """Record the stored image of a job; returns ``(row, replaced)``.

    One image per job: recording a job again (a redelivered result, a job re-run after a
    restart) updates its row. ``replaced`` is the sha256 of the file the row pointed at before
    when nothing references it any more, so the caller can delete that file; else None.
    """
    now = as_utc(now)
    async with db.sessions.begin() as session:
        row = await session.scalar(select(ImageRecord).where(ImageRecord.job_key == job_key))
        previous = None
        if row is None:
            row = ImageRecord(job_key=job_key)
            session.add(row)
        elif row.sha256 != sha256:
            previous = row.sha256
        row.sha256 = sha256
        row.size = size
        row.width = width
        row.height = height
        row.thumb_size = thumb_size
        row.user_id = user_id
        row.guild_id = guild_id
        row.created_at = now
        await session.flush()
        replaced = None
        if previous is not None and await _unreferenced(session, [previous]):
            replaced = previous
    return row, replaced


async def get_image(db: Database, job_key: str) -> ImageRecord | None:
    """The stored image of a job, or None (never stored, swept by retention, or erased)."""
    async with db.readers() as session:
        return await session.scalar(select(ImageRecord).where(ImageRecord.job_key == job_key))


async def image_references(db: Database, sha256: str) -> int:
    """How many jobs' rows point at this file."""
    async with db.readers() as session:
        count = await session.scalar(
            select(func.count()).select_from(ImageRecord).where(ImageRecord.sha256 == sha256)
        )
        return int(count or 0)


async def images_oldest_first(
    db: Database, *, limit: int = _CHUNK, before: dt.datetime | None = None
) -> list[ImageRecord]:
    """Image rows, oldest first (retention order); only those made before ``before`` if given."""
    if limit < 1:
        raise ValueError("limit must be >= 1")
    query = select(ImageRecord).order_by(ImageRecord.created_at, ImageRecord.id).limit(limit)
    if before is not None:
        query = query.where(ImageRecord.created_at < as_utc(before))
    async with db.readers() as session:
        return list((await session.scalars(query)).all())


async def image_totals(db: Database) -> tuple[int, int]:
    """``(images, bytes)`` recorded, thumbnails included: what ``/status`` shows."""
    async with db.readers() as session:
        count, total = (
            await session.execute(
                select(
                    func.count(ImageRecord.id),
                    func.coalesce(func.sum(ImageRecord.size + ImageRecord.thumb_size), 0),
                )
            )
        ).one()
        return int(count or 0), int(total or 0)


async def delete_image(db: Database, job_key: str) -> str | None:
    """Forget a job's stored image (its Delete button); returns its sha256 when the file may go
    (no other job's row references it), else None. The history row stays."""
    async with db.sessions.begin() as session:
        row = await session.scalar(select(ImageRecord).where(ImageRecord.job_key == job_key))
        if row is None:
            return None
        sha256 = row.sha256
        await session.delete(row)
        await session.flush()
        return sha256 if await _unreferenced(session, [sha256]) else None


async def forget_images(db: Database, sha256s: Iterable[str]) -> int:
    """Drop the rows of files that are gone (after the store's retention sweep deleted them);
    returns how many rows went. The jobs' history rows stay."""
    shas = sorted(set(sha256s))
    removed = 0
    async with db.sessions.begin() as session:
        for chunk in _chunks(shas):
            removed += await rows_changed(
                session,
                delete(ImageRecord)
                .where(ImageRecord.sha256.in_(chunk))
                .execution_options(synchronize_session=False),
            )
    if removed:
        log.info("forgot %d stored image rows whose files were swept", removed)
    return removed


async def erase_user(db: Database, user_id: int) -> ErasedUser:
    """Erase a member's stored images and history rows, in every guild, in one transaction.

    Jobs still queued, running or delivering are left alone (their tasks would otherwise fail
    to record the result); the member can erase again once they end. Quota usage is not
    history and stays, so erasing never hands back today's quota.
    """
    async with db.sessions.begin() as session:
        active_keys = set(
            (
                await session.scalars(
                    select(Generation.job_key).where(
                        Generation.user_id == user_id, Generation.status.in_(ACTIVE_STATUSES)
                    )
                )
            ).all()
        )
        rows = (
            await session.execute(
                select(ImageRecord.job_key, ImageRecord.sha256).where(
                    ImageRecord.user_id == user_id
                )
            )
        ).all()
        doomed = [(key, sha) for key, sha in rows if key not in active_keys]
        for chunk in _chunks([key for key, _ in doomed]):
            await session.execute(
                delete(ImageRecord)
                .where(ImageRecord.job_key.in_(chunk))
                .execution_options(synchronize_session=False)
            )
        generations = await rows_changed(
            session,
            delete(Generation)
            .where(Generation.user_id == user_id, Generation.status.not_in(ACTIVE_STATUSES))
            .execution_options(synchronize_session=False),
        )
        await session.flush()
        unreferenced = await _unreferenced(session, [sha for _, sha in doomed])
    await scrub_search_index(db)  # the erased prompts' words leave the search index too
    erased = ErasedUser(
        generations=generations,
        images=len(doomed),
        unreferenced=unreferenced,
        kept_active=len(active_keys),
    )
    log.info(
        "erased user %s: %d history rows, %d images (%d files to delete), %d active jobs kept",
        user_id,
        erased.generations,
        erased.images,
        len(erased.unreferenced),
        erased.kept_active,
    )
    return erased
