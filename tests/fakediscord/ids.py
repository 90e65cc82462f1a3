"""Snowflake ids and ISO timestamps the way Discord writes them."""
from __future__ import annotations

import datetime as dt
import itertools
import logging
import secrets
import time

log = logging.getLogger(__name__)

DISCORD_EPOCH_MS = 1420070400000


class SnowflakeFactory:
    """Unique, increasing snowflakes: milliseconds since Discord's epoch << 22 | a counter."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._last = 0

    def next(self) -> int:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        value = (ms << 22) | (next(self._counter) & 0x3FFFFF)
        self._last = max(self._last + 1, value)
        return self._last


def iso(ts: float) -> str:
    """A unix time as Discord's ISO-8601 string (UTC, microseconds, +00:00)."""
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).isoformat()


def new_token(prefix: str = "fake") -> str:
    """An interaction token: URL-safe, unique, obviously fake."""
    return f"{prefix}_{secrets.token_urlsafe(24)}"
