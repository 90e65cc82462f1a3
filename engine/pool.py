"""The worker pool: one `Worker` per device of `[engine] devices`, all taking jobs from the one `JobQueue`.

The bot and the tests start workers here and nowhere else (bench/multigpu_bench.py wraps engines it loaded
itself, to reuse them across its runs). Devices load one after the other (loading is RAM-heavy) and
tolerantly: a device whose engine cannot load is reported and skipped, the others still start. After each
device the pool calls `on_change(PoolState)` on the event loop — which devices run, which failed and why,
which are still to load — so its owner can tell users (the bot's engine state).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

from engine.devices import resolve_devices
from engine.queue import JobQueue
from engine.worker import Worker, WorkerHooks

if TYPE_CHECKING:
    from engine.settings import EngineSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceFailure:
    """A device whose engine did not load, and the exception that stopped it."""
    device: str
    worker_name: str
    error: BaseException


@dataclass(frozen=True)
class PoolState:
    """The pool after its latest change. `workers` run (in device order); `failed` did not load; `pending`
    devices are still to load."""
    workers: tuple[Worker, ...] = ()
    failed: tuple[DeviceFailure, ...] = ()
    pending: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        """Every device has been tried."""
        return not self.pending

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(w.name for w in self.workers)


@dataclass
class WorkerPool:
    """Starts and stops the workers of every device. `loader(settings, device)` replaces `Engine.load` (see
    `engine.engine_process.choose_loader`); `devices` replaces `[engine] devices` resolved."""
    settings: "EngineSettings"
    queue: JobQueue
    hooks: WorkerHooks
    loader: Callable[[Any, str], Any] | str | None = None
    devices: Sequence[str] | None = None
    on_change: Callable[[PoolState], None] | None = None
    state: PoolState = field(default_factory=PoolState)

    @property
    def workers(self) -> list[Worker]:
        return list(self.state.workers)

    async def start(self) -> PoolState:
        """Load each device's engine and start its worker as soon as it is ready (jobs already queued start
        then). Returns the final state: `workers` empty when no device could load."""
        # 1. The devices (torch is imported off the event loop when they are "auto").
        devices = list(self.devices) if self.devices is not None else \
            await asyncio.to_thread(resolve_devices, self.settings.devices)
        self._change(pending=tuple(devices))
        # 2. One after another: a failure is reported and the next device still loads.
        for i, device in enumerate(devices):
            name = f"{device}#{i}"
            try:
                worker = await Worker.load(name, self.settings, device, self.queue, self.hooks, loader=self.loader)
            except Exception as err:  # noqa: BLE001 - every load failure is this device's, reported below
                log.error("the engine could not load on %s: %s. Fix [engine] in the config (python -m bot doctor "
                          "checks it) and restart; jobs stay queued meanwhile.", device, err, exc_info=True)
                self._change(failed=(*self.state.failed, DeviceFailure(device, name, err)),
                             pending=tuple(devices[i + 1:]))
                continue
            # 3. Start taking jobs; the ETAs count the workers that really run.
            self.queue.set_workers(len(self.state.workers) + 1)
            worker.start()
            self._change(workers=(*self.state.workers, worker), pending=tuple(devices[i + 1:]))
        if not self.state.workers:
            log.error("no engine loaded on any of %s", devices)
        return self.state

    async def stop(self, *, close_engines: bool = True) -> None:
        """Stop every worker (their running jobs get no outcome: restart recovery reruns them) and close their
        engines unless told not to (an engine the caller shares)."""
        for worker in self.state.workers:
            try:
                await worker.stop(close_engine=close_engines)
            except Exception:
                log.exception("stopping worker %s failed", worker.name)

    def _change(self, **changes: Any) -> None:
        """Replace the state and tell the owner; a failing callback is logged, the pool goes on."""
        self.state = replace(self.state, **changes)
        if self.on_change is None:
            return
        try:
            self.on_change(self.state)
        except Exception:
            log.exception("the worker pool's on_change callback failed")
