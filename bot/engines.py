"""The image engine as the bot sees it: loaded in the background, one worker per device, and its state for users.

`Engines.start()` (from `FluxBot.setup_hook`, once recovered jobs are back in the queue) loads the engine's worker
pool in a task: loading FLUX takes minutes, and jobs wait in the queue meanwhile. The pool is `WorkerPool`
(engine/pool.py: one engine per device, one after the other; a device that fails does not stop the others), or with
`[engine] backend = "ray"` `RayWorkerPool` (engine/ray_pool.py: one engine actor per GPU of a Ray cluster, following
its membership: workers come and go while the bot runs). `state` says whether the engine
is loading, ready, or failed on every device (bot/engine_state.py); listeners hear each change (the tracker redraws
the lines of waiting jobs).
"""
from __future__ import annotations

import asyncio
import gc
import logging
from typing import TYPE_CHECKING, Any, Callable, Sequence

from bot.config import ConfigError
from bot.engine_state import EngineState, EngineStatus, failure_reason
from engine.listeners import Listeners
from engine.pool import WorkerPool

if TYPE_CHECKING:
    from bot.service import JobService
    from engine.pool import PoolState
    from engine.queue import JobQueue
    from engine.ray_settings import RaySettings
    from engine.settings import EngineSettings
    from engine.worker import Worker

log = logging.getLogger(__name__)


class Engines:
    """`loader(settings, device)` replaces `Engine.load` (e.g. one engine shared by tests); `close_engines=False`
    leaves such a shared engine open when the bot stops; `freeze_gc` (`python -m bot run`) takes the loaded
    libraries' objects out of the garbage collector's reach."""

    def __init__(self, settings: "EngineSettings", queue: "JobQueue", jobs: "JobService", devices: Sequence[str], *,
                 loader: Callable[[Any, str], Any] | str | None = None, close_engines: bool = True,
                 freeze_gc: bool = False, ray: "RaySettings | None" = None):
        self.jobs = jobs
        self.state = EngineState(EngineStatus.LOADING)
        self.workers: list["Worker"] = []
        self._pool = worker_pool(settings, ray, queue, jobs, loader=loader, devices=devices,
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
        """After each device: workers that now run take jobs and cancels, and the engine is READY on them. A worker
        that left (its Ray node is gone) no longer does; with none left, jobs wait for GPUs to join (LOADING)."""
        started = [w for w in state.workers if w not in self.workers]
        gone = [w for w in self.workers if w not in state.workers]
        for worker in gone:
            self.workers.remove(worker)
            self.jobs.workers.remove(worker)
        for worker in started:
            self.workers.append(worker)
            self.jobs.workers.append(worker)
            self.jobs.model_id = getattr(worker.engine, "model_id", None)
        if state.workers and (started or gone):
            self._set(EngineState(EngineStatus.READY, devices=state.names))
        elif gone:
            self._set(EngineState(EngineStatus.LOADING))

    def _set(self, state: EngineState) -> None:
        self.state = state
        log.info("engine %s%s", state.status.value, f": {state.reason}" if state.reason else "")
        self._listeners.emit(state)


def worker_pool(settings: "EngineSettings", ray: "RaySettings | None", queue: "JobQueue", jobs: "JobService", *,
                loader: Callable[[Any, str], Any] | str | None, devices: Sequence[str],
                on_change: Callable[["PoolState"], None]):
    """The pool of `[engine] backend`: this host's devices, or a Ray cluster's GPUs (Ray is imported only then).
    With Ray, a loader named "module:function" runs in each engine actor on its own host; a Python function
    `loader(settings, node_id)` gives a slot its engine on the bot's side (tests hand every bot one actor)."""
    if settings.backend != "ray":
        return WorkerPool(settings, queue, jobs, loader=loader, devices=list(devices), on_change=on_change)
    try:
        from engine.ray_pool import RayWorkerPool  # lazy: Ray is an optional extra, imported only for backend "ray"
        from engine.ray_settings import RaySettings  # lazy: with the pool it configures
    except ImportError as err:
        raise ConfigError(f"[engine] backend = \"ray\" needs Ray, which is not installed ({err}): "
                          f"pip install -e '.[ray]'") from None
    return RayWorkerPool(settings, ray or RaySettings(), queue, jobs, loader=loader, on_change=on_change)
