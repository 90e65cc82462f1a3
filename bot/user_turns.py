"""One user's requests admitted in the order they reached the bot (`UserTurns`)."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator


class UserTurns:
    """One lock per user, so that a user's requests are admitted in the order they reached the bot.

    A request takes its user's turn before its first real `await` (reading a parent job, the admission): asyncio
    locks wake waiters first come, first served, and discord.py starts one task per interaction in the order the
    gateway delivered them, so a 🎲 that reads its parent first can no longer be overtaken by an /imagine of the
    same user sent a few ms later. Locks exist only while someone holds or waits for them."""

    def __init__(self) -> None:
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}  # user id -> (lock, holders and waiters)

    @asynccontextmanager
    async def turn(self, user_id: int) -> AsyncIterator[None]:
        # 1. This user's lock, counted as wanted by one more request.
        lock, wanting = self._locks.get(user_id, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[user_id] = (lock, wanting + 1)
        try:
            # 2. Wait for the user's earlier requests (none is the usual case: no wait, no yield).
            async with lock:
                yield
        finally:
            # 3. Drop the lock with its last user.
            lock, wanting = self._locks[user_id]
            if wanting <= 1:
                del self._locks[user_id]
            else:
                self._locks[user_id] = (lock, wanting - 1)

    def __len__(self) -> int:
        return len(self._locks)
