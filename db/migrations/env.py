"""Alembic environment: async engine, batch mode for SQLite.

Two ways in:

* ``db.Database.open`` passes its own connection in ``config.attributes["connection"]`` (the
  Alembic cookbook's connection sharing with ``run_sync``), so the upgrade runs on the bot's
  engine inside one transaction.
* The ``alembic`` command line builds an engine from ``-x url=...``, ``sqlalchemy.url`` or
  ``IMAGINE_DATABASE_URL``, with the same SQLite tuning as the bot.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from logging.config import fileConfig
from typing import Literal

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection

from db.database import DEFAULT_URL, create_engine, ensure_sqlite_dir
from db.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata

# Only the command line configures logging: inside the bot it must not replace the bot's setup.
if config.cmd_opts is not None and config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    return (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("IMAGINE_DATABASE_URL")
        or DEFAULT_URL
    )


def _render_item(type_: str, obj: object, autogen_context: object) -> str | Literal[False]:
    # Migrations stay frozen plain SQL types, never importing today's Python-side types.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime()"
    return False


def _include_name(name: str | None, type_: str, parent_names: object) -> bool:
    # The gallery's FTS5 index (0004_gallery_search) is raw SQL no model describes: a virtual
    # table and its shadow tables, which autogenerate must neither drop nor report.
    return not (type_ == "table" and name is not None and name.startswith("generations_fts"))


def _configure(
    *,
    connection: Connection | None = None,
    url: str | None = None,
    transactional_ddl: bool | None = None,
    literal_binds: bool = False,
    dialect_opts: dict[str, str] | None = None,
) -> None:
    context.configure(
        connection=connection,
        url=url,
        transactional_ddl=transactional_ddl,
        literal_binds=literal_binds,
        dialect_opts=dialect_opts,
        target_metadata=target_metadata,
        render_item=_render_item,
        include_name=_include_name,
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        render_as_batch=True,
        compare_type=True,
    )


def run_migrations_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    # SQLAlchemy emits BEGIN (IMMEDIATE) itself on our engines, so SQLite DDL is
    # transactional: a failed upgrade leaves the old schema intact.
    _configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    url = _url()
    ensure_sqlite_dir(url)
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(run_async_migrations())
        return
    # Alembic's commands are synchronous; called from async code (an admin script, a test)
    # they get a private event loop on a helper thread instead of failing in asyncio.run.
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        executor.submit(lambda: asyncio.run(run_async_migrations())).result()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
