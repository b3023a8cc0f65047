"""``python -m db``: the operator's handle on schema migrations (upgrade, rollback, inspection).

The bot migrates to head by itself at start; this exists for the other direction. Rolling back
to an older release means migrating down *with the newer code* (only it knows how to undo its
own revisions), then starting the old release. The URL comes from ``--url``, else
``IMAGINE_DATABASE_URL`` (environment, then ``.env``), else the bot's default.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from dotenv import dotenv_values
from sqlalchemy import pool
from sqlalchemy.engine import URL, make_url

from db.database import (
    DEFAULT_URL,
    READ_ONLY,
    alembic_config,
    create_engine,
    ensure_sqlite_dir,
    sqlite_file,
)

URL_ENV = "IMAGINE_DATABASE_URL"


def database_url(explicit: str | None = None) -> str:
    """The database the bot would open, resolved the way its settings resolve it."""
    if explicit:
        return explicit
    if os.environ.get(URL_ENV):
        return os.environ[URL_ENV]
    from_file = dotenv_values(".env").get(URL_ENV) if os.path.exists(".env") else None
    return from_file or DEFAULT_URL


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m db", description=__doc__.split("\n")[0])
    parser.add_argument("--url", help=f"database URL (default: ${URL_ENV}, .env, {DEFAULT_URL})")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("current", help="the revision the database is at")
    sub.add_parser("history", help="every revision this version knows, newest first")
    up = sub.add_parser("upgrade", help="migrate up (the bot does this itself at start)")
    up.add_argument("revision", nargs="?", default="head")
    down = sub.add_parser("downgrade", help="migrate down, before starting an older release")
    down.add_argument("revision", help="target revision, e.g. 0001")
    return parser


def current(url: str, cfg: Config) -> int:
    """Print the revision the database is at, or that none is: without creating the database
    or its folder (Alembic's own ``current`` printed nothing for a fresh database, and made both
    while looking)."""
    parsed = make_url(url)
    path = sqlite_file(parsed) if parsed.get_backend_name() == "sqlite" else None
    if path is not None and not path.expanduser().exists():
        print(
            f"no migrations applied: there is no database at {path} yet (the bot makes it at "
            "its first start, or run `python -m db upgrade`)"
        )
        return 0
    heads = asyncio.run(_current_heads(parsed))
    if not heads:
        print("no migrations applied")
        return 0
    known_heads = set(ScriptDirectory.from_config(cfg).get_heads())
    for revision in heads:
        print(f"{revision} (head)" if revision in known_heads else revision)
    return 0


async def _current_heads(url: URL) -> tuple[str, ...]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:  # a deferred BEGIN: reading the revision never takes the running bot's write lock
        async with engine.execution_options(**{READ_ONLY: True}).connect() as connection:
            return await connection.run_sync(
                lambda sync: tuple(MigrationContext.configure(sync).get_current_heads())
            )
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    """Run one migration command; exit 2 with a plain message when Alembic refuses."""
    args = _parser().parse_args(argv)
    url = database_url(args.url)
    cfg = alembic_config(url)
    try:
        if args.action == "current":
            return current(url, cfg)
        elif args.action == "history":
            command.history(cfg)
        elif args.action == "upgrade":
            ensure_sqlite_dir(url)
            command.upgrade(cfg, args.revision)
        else:
            command.downgrade(cfg, args.revision)
    except CommandError as exc:
        print(f"python -m db: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
