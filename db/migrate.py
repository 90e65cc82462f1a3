"""Alembic, run from Python: the scripts live inside the package (`db/migrations`), so an installed bot can
migrate its own database at start-up and through `python -m bot migrate`.

The async engine hands Alembic a plain connection through `connection.run_sync`; `env.py` picks it up from
`config.attributes["connection"]`. `migrations_dir` exists so a test can run a copy with an extra revision.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from db.errors import StoreError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(connection: Connection | None = None, migrations_dir: Path = MIGRATIONS_DIR) -> Config:
    """An Alembic Config whose scripts are the package's own; `connection` is the one to migrate."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision(migrations_dir: Path = MIGRATIONS_DIR) -> str:
    """The newest revision this version of fluxbot knows."""
    head = ScriptDirectory.from_config(alembic_config(None, migrations_dir)).get_current_head()
    if head is None:
        raise StoreError(f"no migration scripts in {migrations_dir / 'versions'}: the installation is broken; "
                         f"reinstall fluxbot")
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at; None for an empty database."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


# Execution option read by db.session's SQLite BEGIN hook: turn foreign keys off before BEGIN.
FOREIGN_KEYS_OFF = "fluxbot_sqlite_foreign_keys_off"


async def upgrade_to_head(engine: AsyncEngine, migrations_dir: Path = MIGRATIONS_DIR) -> tuple[str | None, str]:
    """Apply every migration the database lacks, in one transaction. Returns (revision before, after).

    On SQLite, foreign keys are off during the migration: a batch migration rebuilds a table (copy, DROP,
    rename), and with them on, the DROP's implicit DELETE would run ON DELETE SET NULL on the copy and wipe
    every job's parent_id. The PRAGMA is a no-op inside a transaction, so db.session's BEGIN hook sets it
    before every BEGIN: off when this execution option is on, on otherwise.
    """
    sqlite = engine.dialect.name == "sqlite"
    async with engine.connect() as conn:
        if sqlite:
            await conn.execution_options(**{FOREIGN_KEYS_OFF: True})
        try:
            async with conn.begin():
                result = await conn.run_sync(_upgrade, migrations_dir)
                if sqlite:
                    await conn.run_sync(_check_foreign_keys)
            return result
        except CommandError as e:
            raise StoreError(f"cannot migrate the database: {e}. If it was written by a newer fluxbot, upgrade "
                             f"fluxbot (or restore a backup of the database file)") from None


def schema_sql(url: str, migrations_dir: Path = MIGRATIONS_DIR) -> str:
    """The SQL that would bring an empty database at `url` to head, without connecting (for a DBA to review).

    Only the dialect matters: `postgresql://…` renders Postgres DDL even when no driver is installed.
    """
    buffer = io.StringIO()
    cfg = alembic_config(None, migrations_dir)
    cfg.output_buffer = buffer
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head", sql=True)
    return buffer.getvalue()


def _check_foreign_keys(conn: Connection) -> None:
    bad = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if bad:
        raise StoreError(f"the migration left {len(bad)} row(s) with broken references (first: {tuple(bad[0])}); "
                         f"nothing was changed. Report this with the database file")


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _upgrade(conn: Connection, migrations_dir: Path) -> tuple[str | None, str]:
    # 1. where the database is now
    before = _current(conn)
    head = head_revision(migrations_dir)
    if before == head:
        return before, head
    # 2. run the scripts on this very connection (env.py reads it from config.attributes)
    log.info("migrating database from %s to %s", before or "empty", head)
    command.upgrade(alembic_config(conn, migrations_dir), "head")
    # 3. where it is now
    return before, _current(conn)
