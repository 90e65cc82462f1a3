"""Starting the console: `python -m bot web` (alone: the engine, the queue and the database, no Discord, no token) and
`[web] enabled` inside `python -m bot run` (`embedded_console`: the bot's own services).

Alone, it runs on the same services as the bot (bot/app.py `open_services`): jobs an earlier run left unfinished (the
bot's too) run again, Discord jobs finished here are delivered by the bot when it next starts, and images are pruned
by `[storage]` as usual. Ctrl+C or SIGTERM stops it: the console first, then the workers (a running job stays
`running` and runs again at the next start), the chores and the store.

Importing this module does not import gradio (the optional `web` extra): `open_console` does, and says what to
install when it is missing.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, AsyncIterator, Callable

from bot.app import open_services
from bot.bot_services import Services
from bot.config import Config, ConfigError, load_config
from bot.logging_setup import setup_logging
from bot.web.exposure import ServeOptions, serve_options
from bot.web.jobs import WebJobs
from engine.models import quiet_loading_bars

if TYPE_CHECKING:
    from bot.web.server import ConsoleServer

log = logging.getLogger(__name__)

MISSING_EXTRA = "the web console needs the web extra: pip install -e '.[web]' (gradio, uvicorn)"


def web_command(args) -> int:
    """`python -m bot web`: the config (no token), `[web]` checked, logging (the password is one of the secrets it
    never shows), then serve until Ctrl+C or SIGTERM."""
    config = load_config(getattr(args, "config", None))
    options = serve_options(config)
    setup_logging(config.logging, secrets=options.secrets)
    quiet_loading_bars()
    signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    try:
        asyncio.run(serve_console(config, options))
    except KeyboardInterrupt:
        pass  # Ctrl+C or SIGTERM: serve_console stopped everything on its way out
    return 0


async def serve_console(config: Config, options: ServeOptions, *, on_ready: Callable[[str], None] | None = None,
                        **service_options) -> None:
    """The services, the chores, recovery, the engines (in the background) and the console, until cancelled."""
    services = await open_services(config, **service_options)
    server: "ConsoleServer | None" = None
    try:
        # 1. what the bot's start-up does, without Discord
        await services.housekeeping.start()
        await services.jobs.recover()
        services.engines.start()
        # 2. the page
        server = await open_console(services, options)
        print(f"web console at {server.url} (Ctrl+C stops it)", file=sys.stderr, flush=True)
        if on_ready is not None:
            on_ready(server.url)
        await server.serve_forever()
    finally:
        if server is not None:
            await server.stop()
        await services.engines.stop()
        await services.housekeeping.stop()
        services.queue.close()
        await services.store.close()


@asynccontextmanager
async def embedded_console(services: Services,
                           options: ServeOptions | None) -> AsyncIterator["ConsoleServer | None"]:
    """`async with embedded_console(bot.services, options) as server:` serves the console beside the bot (options
    None: `[web]` is not enabled, nothing is served and `server` is None)."""
    if options is None:
        yield None
        return
    server = await open_console(services, options)
    try:
        yield server
    finally:
        await server.stop()


def web_options(config: Config) -> ServeOptions | None:
    """`[web]` for `python -m bot run`: None unless enabled; checked before anything starts (a ConfigError names the
    key)."""
    return serve_options(config) if config.web.enabled else None


async def open_console(services: Services, options: ServeOptions) -> "ConsoleServer":
    """The page over these services, listening."""
    try:
        from bot.web.console import build_console  # lazy: gradio is the optional web extra
        from bot.web.server import ConsoleServer  # lazy: gradio is the optional web extra
    except ModuleNotFoundError as e:
        if e.name not in ("gradio", "uvicorn", "fastapi"):
            raise
        raise ConfigError(MISSING_EXTRA) from None
    server = ConsoleServer(build_console(WebJobs(services.jobs), services.config, services.sizes), options)
    await server.start()
    return server


def _stop_like_ctrl_c(signum, _frame) -> None:
    raise KeyboardInterrupt
