"""``python -m db``: the rollback path that README's "Backups and upgrades" documents."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from db.__main__ import database_url, main

ROOT = Path(__file__).resolve().parents[2]


def _revision(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_upgrade_downgrade_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "imagine.db"
    url = f"sqlite+aiosqlite:///{path}"
    assert main(["--url", url, "upgrade"]) == 0
    head = _revision(path)
    assert "generations" in _tables(path)
    assert main(["--url", url, "downgrade", "0001"]) == 0
    assert _revision(path) == "0001"
    assert main(["--url", url, "upgrade", "head"]) == 0
    assert _revision(path) == head


def test_unknown_revision_is_a_plain_error(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    assert main(["--url", url, "upgrade"]) == 0
    done = subprocess.run(
        [sys.executable, "-m", "db", "--url", url, "downgrade", "nope"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2
    assert "nope" in done.stderr
    assert "Traceback" not in done.stderr


def test_url_comes_from_env_then_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMAGINE_DATABASE_URL", raising=False)
    (tmp_path / ".env").write_text("IMAGINE_DATABASE_URL=sqlite+aiosqlite:///from-file.db\n")
    assert database_url() == "sqlite+aiosqlite:///from-file.db"
    monkeypatch.setenv("IMAGINE_DATABASE_URL", "sqlite+aiosqlite:///from-env.db")
    assert database_url() == "sqlite+aiosqlite:///from-env.db"
    assert database_url("sqlite+aiosqlite:///given.db") == "sqlite+aiosqlite:///given.db"


def test_current_on_a_fresh_database_says_so_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """issue 20 item 14: ``current`` printed nothing on a fresh database, and created its
    folders (and an empty file) while looking."""
    path = tmp_path / "not" / "yet" / "imagine.db"
    url = f"sqlite+aiosqlite:///{path}"
    assert main(["--url", url, "current"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no migrations applied") and str(path) in out
    assert not (tmp_path / "not").exists()

    path.parent.mkdir(parents=True)
    sqlite3.connect(path).close()  # an empty database file
    assert main(["--url", url, "current"]) == 0
    assert capsys.readouterr().out.strip() == "no migrations applied"

    assert main(["--url", url, "upgrade"]) == 0
    capsys.readouterr()
    assert main(["--url", url, "current"]) == 0
    assert capsys.readouterr().out.strip() == f"{_revision(path)} (head)"
    assert main(["--url", url, "downgrade", "0001"]) == 0
    capsys.readouterr()
    assert main(["--url", url, "current"]) == 0
    assert capsys.readouterr().out.strip() == "0001"
