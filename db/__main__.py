"""``python -m db``: the operator's handle on schema migrations (upgrade, rollback, inspection).

The bot migrates to head by itself at start; this exists for the other direction. Rolling back
to an older release means migrating down *with the newer code* (only it knows how to undo its
own revisions), then starting the old release. The URL comes from ``--url``, else
``IMAGINE_DATABASE_URL`` (environment, then ``.env``), else the bot's default.
"""

from __future__ import annotations

import argparse
import os
import sys

from alembic import command
from alembic.util import CommandError
from dotenv import dotenv_values

from db.database import DEFAULT_URL, alembic_config, ensure_sqlite_dir

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


def main(argv: list[str] | None = None) -> int:
    """Run one migration command; exit 2 with a plain message when Alembic refuses."""
    args = _parser().parse_args(argv)
    url = database_url(args.url)
    cfg = alembic_config(url)
    try:
        if args.action == "current":
            command.current(cfg, verbose=False)
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
