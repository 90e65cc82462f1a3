"""Errors of the store. Their messages say what to check or do."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class StoreError(Exception):
    """The database cannot be opened or migrated."""
