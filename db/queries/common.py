"""What every query module shares: UTC handling, the "0 means no limit" rule, guild scoping."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import cast

from sqlalchemy import ColumnElement, CursorResult, Delete, Update
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import DM_GUILD_ID, Base, Generation


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(now: dt.datetime | None) -> dt.datetime:
    """``now`` as aware UTC (naive values are taken as UTC); None means the current time."""
    if now is None:
        return utcnow()
    if now.tzinfo is None:
        return now.replace(tzinfo=dt.UTC)
    return now.astimezone(dt.UTC)


def limit_or_none(value: int | None) -> int | None:
    """A limit as the queries apply it: None and 0 (what admins type to lift a cap) are none."""
    return value if value is not None and value > 0 else None


def quota_guild(guild_id: int | None) -> int:
    """The guild id quota rows use: DMs count under ``DM_GUILD_ID`` (SQLite's NULLs differ)."""
    return DM_GUILD_ID if guild_id is None else guild_id


def same_guild(guild_id: int | None) -> ColumnElement[bool]:
    """A WHERE clause for generations in this guild (None: in direct messages)."""
    return Generation.guild_id.is_(None) if guild_id is None else Generation.guild_id == guild_id


async def insert_ignore(
    session: AsyncSession, model: type[Base], values: Mapping[str, object]
) -> None:
    """INSERT ... ON CONFLICT DO NOTHING in the dialect at hand (SQLite, or PostgreSQL)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        await session.execute(postgresql.insert(model).values(**values).on_conflict_do_nothing())
    else:
        from sqlalchemy.dialects import sqlite

        await session.execute(sqlite.insert(model).values(**values).on_conflict_do_nothing())


async def rows_changed(session: AsyncSession, statement: Update | Delete) -> int:
    """The rows an UPDATE or DELETE (without RETURNING) changed, read in one place: the ORM
    answers such a statement with a CursorResult, but a session cannot promise one for every
    statement, so ``execute`` is typed to return a plain Result (no ``rowcount``)."""
    result = await session.execute(statement)
    # SQLAlchemy's own advice (changelog 2.0.44) where the statement is known to be DML.
    return cast("CursorResult[*tuple[object, ...]]", result).rowcount or 0
