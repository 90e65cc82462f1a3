"""`RunningConsole`: the web console served for real (uvicorn on loopback) over a real store, queue, jobs service and a
tiny engine's worker, all on an event loop of their own thread, so that tests drive it with blocking clients
(gradio_client, Playwright's sync API) as a person's browser would.

One per test module (starting takes about a second): `console.call(coro)` runs a coroutine on its loop (e.g. a
Discord user's job through the same service), `console.start_workers()` starts the engine's worker when a test
held it back to see jobs wait in line.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Coroutine

from bot.config import Config, LimitsSettings
from bot.service import JobService
from bot.validation import parse_sizes
from bot.web.console import build_console
from bot.web.jobs import WebJobs
from bot.web.exposure import ServeOptions
from bot.web.server import ConsoleServer
from db.session import Store, open_store
from engine.pool import WorkerPool
from engine.queue import JobQueue
from engine.settings import TINY, EngineSettings
from tests.support.engines import seam_loader

SIZES = ["1:1 256x256", "3:4 256x320"]  # small presets: a tiny-model image in a fraction of a second


class RunningConsole:
    def __init__(self, tmp: Path, models_dir: Path, *, limits: LimitsSettings | None = None,
                 options: ServeOptions | None = None, start_workers: bool = True):
        settings = EngineSettings(model=TINY, models_dir=str(models_dir), profile="resident", devices=["cpu"],
                                  images_dir=str(tmp / "images"), loras_dir=str(tmp / "loras"), default_steps=2,
                                  max_sequence_length=64)
        self.config = replace(Config(), engine=settings, limits=limits or LimitsSettings())
        self.db_url = f"sqlite+aiosqlite:///{tmp / 'fluxbot.db'}"
        self.options = options or ServeOptions(port=0)
        self._start_workers = start_workers
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="web-console-test", daemon=True)
        self.store: Store | None = None
        self.service: JobService | None = None
        self.pool: WorkerPool | None = None
        self.server: ConsoleServer | None = None
        self.url = ""

    # --- life ------------------------------------------------------------------------------------------------

    def start(self) -> "RunningConsole":
        self._thread.start()
        self.url = self.call(self._start())
        return self

    async def _start(self) -> str:
        self.store = await open_store(self.db_url)
        queue = JobQueue()
        self.service = JobService(self.store, queue, [], self.config.limits, ["forbidden"],
                                  self.config.engine.images_dir)
        self.pool = WorkerPool(self.config.engine, queue, self.service, loader=seam_loader, devices=["cpu"])
        if self._start_workers:
            await self._workers()
        console = build_console(WebJobs(self.service), self.config, parse_sizes(SIZES))
        self.server = ConsoleServer(console, self.options)
        return await self.server.start()

    async def _workers(self) -> None:
        await self.pool.start()
        self.service.workers = self.pool.workers

    def start_workers(self) -> None:
        self.call(self._workers())

    def stop(self) -> None:
        try:
            self.call(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)

    async def _stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        if self.pool is not None:
            await self.pool.stop()
        if self.service is not None:
            self.service.queue.close()
        if self.store is not None:
            await self.store.close()

    # --- helpers -----------------------------------------------------------------------------------------------

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 120) -> Any:
        """Run a coroutine on the console's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def form(prompt: str, seed: float = -1, steps: float = 2, size: str = "256x256", guidance: float = 3.5,
         lora: str = "", lora_strength: float = 1.0, image=None, denoise: float = 0.75) -> tuple:
    """The values of the console's form, in the order of its `/generate` endpoint."""
    return (prompt, seed, steps, size, guidance, lora, lora_strength, image, denoise)


def first_output(job, timeout: float = 60) -> tuple:
    """The first values the page showed for a submitted gradio_client job (status, image, job id, seed, ...)."""
    deadline = time.monotonic() + timeout
    while not job.outputs():
        assert time.monotonic() < deadline, "the console showed nothing"
        time.sleep(0.05)
    return job.outputs()[0]
