"""Alembic, run from Python: the scripts live inside the package (`db/migrations`), so an installed bot can
migrate its own database at start-up and through `python -m bot migrate`.

The async engine hands Alembic a plain connection through `connection.run_sync`; `env.py` picks it up from
`config.attributes["connection"]`.
"""
from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic Config whose scripts are the package's own; `connection` is the one to migrate."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision this version of fluxbot knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, f"no migration scripts in {MIGRATIONS_DIR / 'versions'}"
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at; None for an empty database."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def upgrade_to_head(engine: AsyncEngine) -> tuple[str | None, str]:
    """Apply every migration the database lacks, in one transaction. Returns (revision before, after)."""
    from db.session import StoreError
    async with engine.begin() as conn:
        try:
            return await conn.run_sync(_upgrade)
        except CommandError as e:
            raise StoreError(f"cannot migrate the database: {e}. If it was written by a newer fluxbot, upgrade "
                             f"fluxbot (or restore a backup of the database file)") from None


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _upgrade(conn: Connection) -> tuple[str | None, str]:
    # 1. where the database is now
    before = _current(conn)
    head = head_revision()
    if before == head:
        return before, head
    # 2. run the scripts on this very connection (env.py reads it from config.attributes)
    log.info("migrating database from %s to %s", before or "empty", head)
    command.upgrade(alembic_config(conn), "head")
    # 3. where it is now
    return before, _current(conn)
