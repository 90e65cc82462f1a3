"""`python -m bot migrate`: create the database or bring it to the newest schema, keeping every row.

The bot does the same at start-up; this command lets an operator do it (and see the result) before a
restart, e.g. after `pip install -U fluxbot`, or point a fresh Postgres database at the newest schema.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from bot.config import load_config
from db.errors import StoreError
from db.session import open_store

log = logging.getLogger(__name__)


def migrate_command(args: argparse.Namespace) -> int:
    """Migrate `[database] url` of the config to head. 0 on success, 1 if the database could not be migrated."""
    cfg = load_config(args.config)
    try:
        message = asyncio.run(migrate(cfg.database.url, echo=cfg.database.echo))
    except StoreError as e:
        print(f"migrate: {e}", file=sys.stderr)
        return 1
    print(message)
    return 0


async def migrate(url: str, *, echo: bool = False) -> str:
    """Upgrade the database at `url` to head; returns a line saying what changed."""
    # 1. open_store migrates to head in one transaction and remembers where it started
    store = await open_store(url, echo=echo)
    await store.close()
    # 2. report
    if store.revision_before == store.revision:
        return f"database {store.url} is already at the newest schema ({store.revision})"
    return f"database {store.url} upgraded from {store.revision_before or 'empty'} to {store.revision}"
