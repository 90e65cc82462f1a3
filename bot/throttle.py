"""At most one edit of a status message every N seconds; the latest state wins.

Queue positions and step progress change far faster than Discord lets a bot edit a message. A
`ThrottledEditor` keeps only the newest state and writes it when the interval has passed, so a burst of
updates costs one edit and the last thing the user sees is always the newest state.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class ThrottledEditor(Generic[T]):
    def __init__(self, edit: Callable[[T], Awaitable[None]], interval_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self._edit = edit
        self._interval = interval_s
        self._clock = clock
        self._latest: T | None = None
        self._pending = False
        self._last_edit = -1e18
        self._task: asyncio.Task | None = None
        self._closed = False
        self.edits = 0  # how many edits went out (for logs and tests)

    def push(self, state: T) -> None:
        """Remember `state` and make sure an edit carrying it (or a newer one) happens soon."""
        if self._closed:
            return
        self._latest, self._pending = state, True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="fluxbot-status-edit")

    def refresh(self, state: T) -> bool:
        """Put `state` in place of an edit that is already due, without asking for one: a minor change that should
        not cost an edit of its own still shows with the next one. True if an edit was due."""
        if not self._pending or self._closed:
            return False
        self._latest = state
        return True

    async def close(self, state: T | None = None) -> None:
        """Write `state` (if given) as the last edit, waiting out the interval, then stop taking updates."""
        if state is not None:
            self.push(state)
        self._closed = True
        if self._task is not None:
            await self._task

    def stop(self) -> None:
        """Drop pending updates without a last edit (the message is gone or no longer ours to edit)."""
        self._closed = True
        self._pending = False
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _drain(self) -> None:
        while self._pending:
            # 1. Wait until the interval since the last edit has passed.
            wait = self._last_edit + self._interval - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
            # 2. Take the newest state; anything pushed meanwhile replaced the older ones.
            state, self._pending = self._latest, False
            self._last_edit = self._clock()
            # 3. Edit; a failed edit is logged and the next update tries again.
            try:
                await self._edit(state)
                self.edits += 1
            except Exception:
                log.warning("status edit failed", exc_info=True)
