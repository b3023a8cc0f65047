"""Styles: the built-ins (guild 0, synced from the presets at every start) and each guild's own
templates, which shadow a built-in of the same name in that guild."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.exc import IntegrityError

from db.database import Database
from db.models import BUILTIN_GUILD_ID, Style
from db.queries.common import rows_changed, utcnow

MAX_STYLE_NAME = 64


class StyleExists(Exception):
    """The guild already has its own style by that name (case-insensitive)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"style {name!r} already exists")
        self.name = name


class StyleNotFound(Exception):
    """No style of the guild's own by that name (built-ins cannot be edited or removed)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"style {name!r} not found")
        self.name = name


def style_key(name: str) -> str:
    """The case-insensitive identity of a style name."""
    return name.strip().casefold()


def _check_style_name(name: str) -> str:
    cleaned = name.strip()
    if not cleaned:
        raise ValueError("style name is empty")
    if len(cleaned) > MAX_STYLE_NAME:
        raise ValueError(f"style name is longer than {MAX_STYLE_NAME} characters")
    return cleaned


async def sync_builtin_styles(db: Database, styles: Iterable[tuple[str, str, str, str]]) -> None:
    """Make the built-in rows (guild 0) exactly ``styles``: (name, template, negative,
    description). Run at start, so an upgrade that changes a preset reaches every guild."""
    wanted = {style_key(name): (name, t, n, d) for name, t, n, d in styles}
    now = utcnow()
    async with db.sessions.begin() as session:
        rows = (
            await session.scalars(select(Style).where(Style.guild_id == BUILTIN_GUILD_ID))
        ).all()
        existing = {row.name_key: row for row in rows}
        for key, old in existing.items():
            if key not in wanted:
                await session.delete(old)
        for key, (name, template, negative, description) in wanted.items():
            row = existing.get(key)
            if row is None:
                session.add(
                    Style(
                        guild_id=BUILTIN_GUILD_ID,
                        name=_check_style_name(name),
                        name_key=key,
                        template=template,
                        negative=negative,
                        description=description,
                        created_by=0,
                        created_at=now,
                        updated_at=now,
                    )
                )
            elif (row.name, row.template, row.negative, row.description) != (
                name,
                template,
                negative,
                description,
            ):
                row.name, row.template = name, template
                row.negative, row.description = negative, description
                row.updated_at = now


def _guild_scope(guild_id: int | None) -> ColumnElement[bool]:
    if guild_id is None or guild_id == BUILTIN_GUILD_ID:
        return Style.guild_id == BUILTIN_GUILD_ID
    return Style.guild_id.in_((BUILTIN_GUILD_ID, guild_id))


async def list_styles(db: Database, guild_id: int | None) -> list[Style]:
    """The guild's own styles plus the built-ins it does not shadow, sorted by name."""
    async with db.readers() as session:
        rows = (await session.scalars(select(Style).where(_guild_scope(guild_id)))).all()
    chosen: dict[str, Style] = {}
    for row in rows:
        current = chosen.get(row.name_key)
        if current is None or current.guild_id == BUILTIN_GUILD_ID:
            chosen[row.name_key] = row
    return sorted(chosen.values(), key=lambda s: (s.name_key, s.name))


async def get_style(db: Database, guild_id: int | None, name: str) -> Style | None:
    """A style by name (case-insensitive): the guild's own first, else the built-in."""
    async with db.readers() as session:
        rows = (
            await session.scalars(
                select(Style).where(_guild_scope(guild_id), Style.name_key == style_key(name))
            )
        ).all()
    if not rows:
        return None
    return max(rows, key=lambda s: s.guild_id != BUILTIN_GUILD_ID)


async def add_style(
    db: Database,
    guild_id: int,
    name: str,
    template: str,
    negative: str,
    description: str,
    created_by: int,
) -> Style:
    """Create a guild style; a built-in of the same name is shadowed in this guild."""
    if guild_id == BUILTIN_GUILD_ID:
        raise ValueError("guild id 0 is reserved for built-in styles")
    cleaned = _check_style_name(name)
    now = utcnow()
    try:
        async with db.sessions.begin() as session:
            clash = await session.scalar(
                select(Style.id).where(
                    Style.guild_id == guild_id, Style.name_key == style_key(name)
                )
            )
            if clash is not None:
                raise StyleExists(cleaned)
            style = Style(
                guild_id=guild_id,
                name=cleaned,
                name_key=style_key(name),
                template=template,
                negative=negative,
                description=description,
                created_by=created_by,
                created_at=now,
                updated_at=now,
            )
            session.add(style)
    except IntegrityError as exc:  # a concurrent add on a database without BEGIN IMMEDIATE
        raise StyleExists(cleaned) from exc
    return style


async def edit_style(
    db: Database,
    guild_id: int,
    name: str,
    *,
    template: str | None = None,
    negative: str | None = None,
    description: str | None = None,
) -> Style:
    """Change a guild-owned style (None leaves a field as it is)."""
    async with db.sessions.begin() as session:
        style = await session.scalar(
            select(Style).where(Style.guild_id == guild_id, Style.name_key == style_key(name))
        )
        if style is None or guild_id == BUILTIN_GUILD_ID:
            raise StyleNotFound(name.strip())
        if template is not None:
            style.template = template
        if negative is not None:
            style.negative = negative
        if description is not None:
            style.description = description
        style.updated_at = utcnow()
    return style


async def remove_style(db: Database, guild_id: int, name: str) -> bool:
    """Delete a guild-owned style; built-ins are never removed this way."""
    if guild_id == BUILTIN_GUILD_ID:
        return False
    async with db.sessions.begin() as session:
        removed = await rows_changed(
            session,
            delete(Style).where(Style.guild_id == guild_id, Style.name_key == style_key(name)),
        )
        return bool(removed)
