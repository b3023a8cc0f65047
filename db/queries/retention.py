"""Retention of history: finished generation rows older than the retention period are deleted,
with the image store rows that belong to them (the image, and an edit's kept inputs
``<job_key>:in<n>``). Unfinished rows (queued, running, delivering) are never touched,
whatever their age: a task or the next start's recovery still owns them.

The files themselves live in the bot's image store; like ``db.images``, this module only
reports the sha256s that no row references any more, and the caller deletes those files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from sqlalchemy import delete, or_, select

from db.database import Database
from db.gallery import scrub_search_index
from db.models import ACTIVE_STATUSES, Generation, ImageRecord
from db.queries.common import as_utc, rows_changed

log = logging.getLogger(__name__)

# Rows per transaction: short write transactions, so /imagine never waits behind a big prune.
PRUNE_BATCH = 200


@dataclasses.dataclass(frozen=True)
class PrunedHistory:
    """What a prune removed; ``unreferenced`` are the files the caller may now delete."""

    generations: int
    images: int
    unreferenced: tuple[str, ...]


async def prune_history(
    db: Database, *, older_than: dt.datetime, batch: int = PRUNE_BATCH
) -> PrunedHistory:
    """Delete finished generations made before ``older_than`` and their stored image rows,
    ``batch`` rows per transaction; returns the counts and the files no row references now."""
    if batch < 1:
        raise ValueError("batch must be >= 1")
    cutoff = as_utc(older_than)
    generations = images = 0
    unreferenced: set[str] = set()
    while True:
        async with db.sessions.begin() as session:
            keys = list(
                (
                    await session.scalars(
                        select(Generation.job_key)
                        .where(
                            Generation.created_at < cutoff,
                            Generation.status.not_in(ACTIVE_STATUSES),
                        )
                        .order_by(Generation.created_at, Generation.id)
                        .limit(batch)
                    )
                ).all()
            )
            if not keys:
                break
            owned = or_(
                ImageRecord.job_key.in_(keys),
                *(ImageRecord.job_key.like(f"{key}:%") for key in keys),
            )
            rows = (await session.execute(select(ImageRecord.sha256).where(owned))).scalars()
            shas = set(rows.all())
            images += await rows_changed(
                session,
                delete(ImageRecord).where(owned).execution_options(synchronize_session=False),
            )
            generations += await rows_changed(
                session,
                delete(Generation)
                .where(Generation.job_key.in_(keys))
                .execution_options(synchronize_session=False),
            )
            await session.flush()
            if shas:
                still = set(
                    (
                        await session.scalars(
                            select(ImageRecord.sha256)
                            .where(ImageRecord.sha256.in_(sorted(shas)))
                            .distinct()
                        )
                    ).all()
                )
                unreferenced |= shas - still
        if len(keys) < batch:
            break
    if generations:
        await scrub_search_index(db)  # the pruned prompts' words leave the search index too
        log.info(
            "history retention removed %d generations and %d stored image rows (%d files to "
            "delete)",
            generations,
            images,
            len(unreferenced),
        )
    return PrunedHistory(generations, images, tuple(sorted(unreferenced)))
