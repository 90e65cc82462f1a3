"""Serving the console: uvicorn on the caller's event loop (the one the queue, the jobs service and the workers live
on), never a Gradio share link.

Safety first (bot/web/exposure.py): the console listens on 127.0.0.1 unless told otherwise; any address other
machines can reach needs a login (`[web] auth`, from the config or the environment), and the log says the console is
exposed and that a login protects it, never the password. Gradio's upload route takes files up to `[limits]
max_input_mb`, the limit of a Discord attachment used as an input image.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Iterator

import gradio as gr
import uvicorn
from fastapi import FastAPI

from bot.web.exposure import ServeOptions, check_exposure, log_exposure

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
GRACEFUL_S = 2  # at stop, open pages' event streams get this long before they are cut


class _LoopServer(uvicorn.Server):
    """uvicorn on the caller's event loop; the caller handles the signals (Ctrl+C stops the bot, which stops this)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ConsoleServer:
    """One console, served until `stop`. `url` is where it listens (the real port when 0 was asked for)."""

    def __init__(self, blocks: gr.Blocks, options: ServeOptions):
        self.blocks = blocks
        self.options = options
        self._server: _LoopServer | None = None
        self._task: asyncio.Task | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        host = self.options.host if ":" not in self.options.host else f"[{self.options.host}]"
        return f"http://{host}:{self.port}/"

    async def start(self) -> str:
        """Check the address, bind it (a clear OSError when taken), start serving; returns the URL."""
        # 1. safety and the socket
        check_exposure(self.options)
        log_exposure(self.options)
        sock = _bind(self.options.host, self.options.port)
        self.port = sock.getsockname()[1]
        # 2. the app: Gradio mounted on a bare FastAPI, no share link, no telemetry, no footer links out
        app = gr.mount_gradio_app(FastAPI(openapi_url=None, docs_url=None, redoc_url=None), self.blocks, path="",
                                  auth=self.options.auth, show_error=True, footer_links=["api"], run_history=False,
                                  max_file_size=int(self.options.max_upload_mb * 2**20), ssr_mode=False,
                                  mcp_server=False)
        # 3. uvicorn on this loop (log_config None: the bot's logging stays as it is)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                                timeout_graceful_shutdown=GRACEFUL_S)
        self._server = _LoopServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="fluxbot-web-console")
        await self._started()
        log.info("web console at %s", self.url)
        return self.url

    async def _started(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the web console stopped while starting")
            if loop.time() > deadline:
                raise RuntimeError(f"the web console did not start within {START_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.02)

    async def serve_forever(self) -> None:
        """Wait until the server stops (`stop`, or uvicorn's own exit)."""
        if self._task is not None:
            await self._task

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=10)
        except asyncio.TimeoutError:
            self._server.force_exit = True
            await self._task
        log.info("web console stopped")


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is an error we word, not uvicorn's exit."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    try:
        sock = socket.create_server((host.strip("[]"), port), family=family, reuse_port=False)
    except OSError as e:
        raise OSError(e.errno, f"the web console cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.setblocking(False)
    return sock
