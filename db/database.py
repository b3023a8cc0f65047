"""The async engine, its SQLite tuning, and migrate-on-open.

SQLite notes, because they decide whether quotas hold under load:

* WAL lets readers run while one writer writes.
* ``timeout`` (the driver's busy handler) makes a second writer wait instead of failing with
  "database is locked".
* Every write transaction starts with ``BEGIN IMMEDIATE``. With the driver's default deferred
  BEGIN two transactions can both read, then both try to upgrade to a write lock, and one of
  them fails at once with SQLITE_BUSY (the busy handler is not consulted for a lock upgrade
  that would deadlock). Taking the write lock up front makes them queue instead.
  Read-only helpers use a deferred BEGIN through ``Database.readers`` so they never wait for a
  writer.
* ``secure_delete`` is on for every connection (not left to how SQLite was built): deleted rows
  are overwritten, so an erased prompt is not readable in free pages of the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, Pool

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite+aiosqlite:///./data/imagine.db"
# Seconds a writer waits for the lock before giving up with "database is locked".
BUSY_TIMEOUT_S = 30.0
# Execution option that makes the ``begin`` hook emit a plain (deferred) BEGIN.
READ_ONLY = "imagine_read_only"
# Execution option that makes the ``begin`` hook emit nothing: a checkpoint must run outside any
# transaction.
_NO_TRANSACTION = "imagine_no_transaction"
# How long a checkpoint waits for readers and writers before it gives up for this time.
CHECKPOINT_BUSY_MS = 2000

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
ALEMBIC_INI = Path(__file__).resolve().parent / "alembic.ini"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config that works from any cwd and from an installed package.

    ``script_location`` is an absolute path next to this file, so nothing depends on where the
    process was started.
    """
    cfg = Config(str(ALEMBIC_INI)) if ALEMBIC_INI.exists() else Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation: a literal % in a password must be doubled.
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def sqlite_file(url: URL) -> Path | None:
    """The file behind a SQLite URL, or None for memory databases and URI forms."""
    database = url.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    if url.query.get("uri") in ("true", "1"):
        return None
    return Path(database)


def _install_sqlite_hooks(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        # SQLAlchemy emits BEGIN itself (below); the driver must not emit its own.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL loses no committed data on a crash of the process, only
            # possibly the last transactions on power loss, and it saves an fsync per commit.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            cursor.execute("PRAGMA secure_delete=ON")
        finally:
            cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get(_NO_TRANSACTION):
            return
        if options.get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


# The database holds prompts, interaction tokens and who asked for what: owner only.
SQLITE_FILE_MODE = 0o600
_SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")


def securesqlite_file(path: Path) -> None:
    """Create the SQLite file readable by this user only (0600), and tighten an existing one
    and its -wal / -shm files. SQLite gives the -wal and -shm files it creates later the
    database file's own permissions, so they follow."""
    path = path.expanduser()
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, SQLITE_FILE_MODE)
        os.close(fd)
    for suffix in _SQLITE_COMPANIONS:
        file = Path(f"{path}{suffix}")
        try:
            if stat.S_IMODE(file.stat().st_mode) != SQLITE_FILE_MODE:
                os.chmod(file, SQLITE_FILE_MODE)
        except FileNotFoundError:
            continue
        except OSError as exc:  # not ours (a bind mount): say so, never refuse to start
            log.warning("could not make %s readable by its owner only: %s", file.name, exc)


def ensure_sqlite_dir(url: str | URL) -> None:
    """Create the folder of a SQLite file so a fresh install starts without setup steps, and
    the file itself with owner-only permissions (``secure_sqlite_file``)."""
    parsed = make_url(url)
    if not _is_sqlite(parsed):
        return
    path = sqlite_file(parsed)
    if path is None:
        log.warning(
            "SQLite memory database: contents vanish on exit and concurrent "
            "transactions share one connection; use a file for anything real"
        )
        return
    path = path.expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    securesqlite_file(path)


def create_engine(url: str | URL, *, poolclass: type[Pool] | None = None) -> AsyncEngine:
    """An async engine with the SQLite tuning above (also used by the Alembic CLI env);
    ``poolclass`` None is the dialect's own."""
    parsed = make_url(url)
    connect_args: dict[str, object] = {}
    if _is_sqlite(parsed):
        connect_args["timeout"] = BUSY_TIMEOUT_S
    engine = create_async_engine(parsed, poolclass=poolclass, connect_args=connect_args)
    if _is_sqlite(parsed):
        _install_sqlite_hooks(engine)
    return engine


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer version of the bot than the one running."""


def _upgrade(connection: Connection, cfg: Config, revision: str) -> None:
    script = ScriptDirectory.from_config(cfg)
    current = MigrationContext.configure(connection).get_current_heads()
    known = {rev.revision for rev in script.walk_revisions()}
    unknown = [rev for rev in current if rev not in known]
    if unknown:
        # Alembic would only say "Can't locate revision"; say what happened and what to do.
        raise SchemaTooNew(
            f"the database schema is at revision {', '.join(unknown)}, which this version of "
            "the bot does not know: it was upgraded by a newer version. Run that version, or "
            "restore a backup taken before the upgrade."
        )
    if set(current) != set(script.get_heads()):
        log.info(
            "migrating database schema from %s to %s",
            ", ".join(current) or "empty",
            ", ".join(script.get_heads()),
        )
    # The env script sees this connection and migrates on it instead of opening its own.
    cfg.attributes["connection"] = connection
    try:
        command.upgrade(cfg, revision)
    except CommandError as exc:
        raise RuntimeError(f"database migration failed: {exc}") from exc


class SerializedWrites:
    """The write-session factory for SQLite: one write transaction at a time in this process.

    SQLite has a single writer. Left to itself, a second ``BEGIN IMMEDIATE`` waits inside the
    driver's busy handler, which sleeps and polls while holding a pooled connection; under a
    burst (100 /imagine in one second) writers queued that way for seconds and took every
    pooled connection, so even reads waited and the bot missed Discord's 3-second window
    (tests/wire/test_wire_load.py). An asyncio lock queues writers in arrival order without
    holding connections. Not reentrant: a query must not open a write inside another.
    """

    def __init__(self, factory: async_sessionmaker[AsyncSession]) -> None:
        self._factory = factory
        self._lock = asyncio.Lock()

    def __call__(self) -> AsyncSession:
        return self._factory()

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncSession]:
        async with self._lock, self._factory.begin() as session:
            yield session


class Database:
    """The async engine plus two session factories: ``sessions`` (writes) and ``readers``.

    Build it with ``await Database.open(url)``; queries in ``db.queries`` take it first.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        writers = async_sessionmaker(engine, expire_on_commit=False)
        self.sessions: async_sessionmaker[AsyncSession] | SerializedWrites = (
            SerializedWrites(writers) if _is_sqlite(engine.url) else writers
        )
        # Same pool, but transactions start with a deferred BEGIN: reads never queue behind
        # a writer in WAL mode.
        self.readers: async_sessionmaker[AsyncSession] = async_sessionmaker(
            engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False
        )

    @property
    def url(self) -> URL:
        return self.engine.url

    @classmethod
    async def open(cls, url: str = DEFAULT_URL, *, migrate: bool = True) -> Database:
        """Connect, create the SQLite file's folder, and upgrade the schema to head.

        Migrating on open means an upgraded bot never runs against an old schema and a fresh
        install needs no separate setup step.
        """
        parsed = make_url(url)
        ensure_sqlite_dir(parsed)
        engine = create_engine(parsed)
        db = cls(engine)
        try:
            if migrate:
                await db.migrate()
        except BaseException:
            await engine.dispose()
            raise
        log.info("database ready at %s", parsed.render_as_string(hide_password=True))
        return db

    async def migrate(self, revision: str = "head") -> None:
        """Run Alembic's upgrade on this engine, in one transaction (SQLite DDL is atomic
        here because SQLAlchemy, not the driver, emits BEGIN)."""
        cfg = alembic_config(self.engine.url.render_as_string(hide_password=False))
        async with self.engine.begin() as conn:
            await conn.run_sync(_upgrade, cfg, revision)

    async def checkpoint(self) -> bool:
        """Copy the write-ahead log into the database file and empty it (SQLite only): the log
        keeps old versions of pages, erased prompts included, until it is reset. Best effort:
        False when readers or a writer kept it busy (the next checkpoint catches up)."""
        if not _is_sqlite(self.engine.url):
            return True
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(
                isolation_level="AUTOCOMMIT", **{_NO_TRANSACTION: True}
            )
            await conn.exec_driver_sql(f"PRAGMA busy_timeout={CHECKPOINT_BUSY_MS}")
            try:
                # The row is (busy, log pages, pages checkpointed): only the first matters.
                checkpoint = await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                busy = checkpoint.scalar_one()
            finally:
                await conn.exec_driver_sql(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        if busy:
            log.debug("database checkpoint skipped: the database was busy")
        return not busy

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
