"""The image engine as the bot sees it: loaded in the background, one worker per device, and its state for users.

`Engines.start()` (from `FluxBot.setup_hook`, once recovered jobs are back in the queue) loads the engine's
`WorkerPool` (engine/pool.py: one engine per device, one after the other; a device that fails does not stop the
others) in a task: loading FLUX takes minutes, and jobs wait in the queue meanwhile. `state` says whether the engine
is loading, ready, or failed on every device (bot/engine_state.py); listeners hear each change (the tracker redraws
the lines of waiting jobs).
"""
from __future__ import annotations

import asyncio
import gc
import logging
from typing import TYPE_CHECKING, Any, Callable, Sequence

from bot.engine_state import EngineState, EngineStatus, failure_reason
from engine.listeners import Listeners
from engine.pool import WorkerPool

if TYPE_CHECKING:
    from bot.service import JobService
    from engine.pool import PoolState
    from engine.queue import JobQueue
    from engine.settings import EngineSettings
    from engine.worker import Worker

log = logging.getLogger(__name__)


class Engines:
    """`loader(settings, device)` replaces `Engine.load` (e.g. one engine shared by tests); `close_engines=False`
    leaves such a shared engine open when the bot stops; `freeze_gc` (`python -m bot run`) takes the loaded
    libraries' objects out of the garbage collector's reach."""

    def __init__(self, settings: "EngineSettings", queue: "JobQueue", jobs: "JobService", devices: Sequence[str], *,
                 loader: Callable[[Any, str], Any] | None = None, close_engines: bool = True,
                 freeze_gc: bool = False):
        self.jobs = jobs
        self.state = EngineState(EngineStatus.LOADING)
        self.workers: list["Worker"] = []
        self._pool = WorkerPool(settings, queue, jobs, loader=loader, devices=list(devices),
                                on_change=self._pool_changed)
        self._close_engines = close_engines
        self._freeze_gc = freeze_gc  # tests, which start many bots in one process, leave it off
        self._listeners: Listeners[EngineState] = Listeners("engine state")
        self._loading: asyncio.Task | None = None

    def subscribe(self, listener: Callable[[EngineState], Any]) -> Callable[[], None]:
        """Hear every change of `state`."""
        return self._listeners.subscribe(listener)

    def start(self) -> None:
        """Load the engines in the background."""
        self._loading = asyncio.create_task(self._load(), name="fluxbot-load-engines")

    async def wait_loaded(self) -> int:
        """Wait for the background loading; returns how many workers run."""
        if self._loading is not None:
            await self._loading
        return len(self.workers)

    async def stop(self) -> None:
        """Stop loading and stop the workers (running jobs stay `running` and run again after a restart)."""
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
            await asyncio.gather(self._loading, return_exceptions=True)
        await self._pool.stop(close_engines=self._close_engines)

    async def _load(self) -> None:
        """The first device that loads makes the engine READY (the others keep loading); if none loads, it is FAILED
        with the first device's reason."""
        # 1.-2. Load and start each device's worker; `_pool_changed` hears each device's outcome.
        state = await self._pool.start()
        # 3. The loaded libraries hold millions of long-lived objects that every full garbage collection would
        #    walk again (0.3–1 s stalls of the event loop, measured in docs/reliability.md): take them out.
        if self._freeze_gc:
            gc.collect()
            gc.freeze()
        # 4. No device at all: say so to users, not only in the log.
        if not state.workers:
            reason = failure_reason(state.failed[0].error) if state.failed else "no device to run it on"
            log.error("no engine loaded on any device: new requests are refused with: %s", reason)
            self._set(EngineState(EngineStatus.FAILED, reason=reason))

    def _pool_changed(self, state: "PoolState") -> None:
        """After each device: workers that now run take jobs and cancels, and the engine is READY on them."""
        started = state.workers[len(self.workers):]
        for worker in started:
            self.workers.append(worker)
            self.jobs.workers.append(worker)
            self.jobs.model_id = getattr(worker.engine, "model_id", None)
        if started:
            self._set(EngineState(EngineStatus.READY, devices=state.names))

    def _set(self, state: EngineState) -> None:
        self.state = state
        log.info("engine %s%s", state.status.value, f": {state.reason}" if state.reason else "")
        self._listeners.emit(state)
