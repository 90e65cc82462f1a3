"""Alembic environment of fluxbot.

Three ways in:
1. From Python (`db.migrate.upgrade_to_head`, used at start-up and by `python -m bot migrate`): the caller
   puts a live connection in `config.attributes["connection"]` and this file migrates it.
2. The `alembic` command line (developers writing a new revision):
   `FLUXBOT_DATABASE_URL=sqlite+aiosqlite:///data/fluxbot.db alembic -c db/alembic.ini revision --autogenerate -m "…"`
   builds an async engine from that URL (or from `sqlalchemy.url` in the ini file).
3. Offline (`alembic … upgrade head --sql`): prints the SQL instead of running it.
"""
from __future__ import annotations

import asyncio
import logging
import os

from alembic import context
from sqlalchemy.engine import Connection

from db.migrate import FOREIGN_KEYS_OFF
from db.models import Base
from db.session import open_store

log = logging.getLogger(__name__)

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("FLUXBOT_DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: set FLUXBOT_DATABASE_URL (e.g. sqlite+aiosqlite:///data/fluxbot.db) "
                           "or use `python -m bot migrate`, which reads [database] url from the config")
    return url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things in place
    )


def run_on_connection(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_with_own_engine() -> None:
    # the store's engine, so SQLite gets the same PRAGMAs, real transactions and foreign keys off while
    # migrating as `python -m bot migrate` (see db.migrate.upgrade_to_head)
    store = await open_store(_url(), migrate=False)
    try:
        async with store.engine.connect() as conn:
            await conn.execution_options(**{FOREIGN_KEYS_OFF: True})
            async with conn.begin():
                await conn.run_sync(run_on_connection)
    finally:
        await store.close()


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
elif config.attributes.get("connection") is not None:
    run_on_connection(config.attributes["connection"])
else:
    asyncio.run(run_with_own_engine())
