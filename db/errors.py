"""Errors of the store. Their messages say what to check or do."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class StoreError(Exception):
    """The database cannot be opened or migrated."""


def is_store_busy(error: BaseException) -> bool:
    """SQLite still locked by another connection after the busy timeout: nothing was written, and the same
    statement may succeed when tried again."""
    from sqlalchemy.exc import OperationalError  # lazy: bot.cli imports this module; sqlalchemy takes ~0.3 s

    return isinstance(error, OperationalError) and "database is locked" in str(getattr(error, "orig", error))
