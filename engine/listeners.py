"""Fan-out of events to listeners that may be plain functions or coroutine functions.

Shared by the FIFO (`engine.queue.JobQueue`) and the jobs service (`bot.service.JobService`). A listener
must not block; a coroutine listener runs as a task that is kept referenced until it ends. A failing
listener is logged and never breaks the emitter or the other listeners.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any, Callable, Generic, TypeVar

log = logging.getLogger(__name__)

E = TypeVar("E")


class Listeners(Generic[E]):
    def __init__(self, what: str):
        self._what = what  # named in the log when a listener fails
        self._listeners: list[Callable[[E], Any]] = []
        self._tasks: set[asyncio.Task] = set()

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def subscribe(self, listener: Callable[[E], Any]) -> Callable[[], None]:
        """Add a listener; returns the function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def emit(self, event: E) -> None:
        for listener in list(self._listeners):
            try:
                out = listener(event)
                if inspect.isawaitable(out):
                    task = asyncio.ensure_future(out)
                    self._tasks.add(task)
                    task.add_done_callback(self._done)
            except Exception:
                log.exception("%s listener %r failed on %r", self._what, listener, event)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s listener task failed", self._what, exc_info=task.exception())
