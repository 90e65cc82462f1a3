"""`python -m bot migrate` on a real config file and a real SQLite file."""
from __future__ import annotations

import sqlite3

import pytest

from bot.cli import main
from db.migrate import head_revision


def _config(tmp_path, url: str):
    path = tmp_path / "config.toml"
    path.write_text(f'[database]\nurl = "{url}"\n')
    return str(path)


def test_migrate_creates_then_reports_up_to_date(tmp_path, capsys):
    db_file = tmp_path / "state" / "bot.db"
    cfg = _config(tmp_path, f"sqlite+aiosqlite:///{db_file}")

    assert main(["--config", cfg, "migrate"]) == 0
    assert f"upgraded from empty to {head_revision()}" in capsys.readouterr().out
    tables = {r[0] for r in sqlite3.connect(db_file).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"jobs", "alembic_version"} <= tables

    assert main(["--config", cfg, "migrate"]) == 0
    assert f"already at the newest schema ({head_revision()})" in capsys.readouterr().out


def test_migrate_with_a_sync_driver_says_what_to_use(tmp_path, capsys):
    cfg = _config(tmp_path, f"sqlite:///{tmp_path / 'x.db'}")
    assert main(["--config", cfg, "migrate"]) == 1
    err = capsys.readouterr().err
    assert "async" in err and "sqlite+aiosqlite://" in err


def test_migrate_of_an_unreadable_path_fails_with_a_message(tmp_path, capsys):
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("")
    cfg = _config(tmp_path, f"sqlite+aiosqlite:///{blocker / 'bot.db'}")
    assert main(["--config", cfg, "migrate"]) == 1
    assert "migrate:" in capsys.readouterr().err


def test_migrate_of_an_unreachable_postgres_says_what_to_check(tmp_path, capsys):
    pytest.importorskip("asyncpg")
    cfg = _config(tmp_path, f"postgresql+asyncpg://fluxbot:hunter2@/fluxbot?host={tmp_path}&port=1")
    assert main(["--config", cfg, "migrate"]) == 1
    err = capsys.readouterr().err
    assert "server is running" in err and "hunter2" not in err and "***" in err
