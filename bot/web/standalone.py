"""`python -m bot web`: the web console alone — the engine, the queue and the database, no Discord (no token needed).

It runs on the same services as the bot (bot/app.py `open_services`): jobs left unfinished by an earlier run (the
bot's too) run again, Discord jobs finished here are delivered by the bot when it next starts, and images are
pruned by `[storage]` as usual. Ctrl+C or SIGTERM stops it: the console first, then the workers (a running job stays
`running` and runs again at the next start), the chores and the store.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import sys

from bot.app import open_services
from bot.bot_services import Services
from bot.config import Config, load_config
from bot.logging_setup import setup_logging
from bot.web.console import build_console
from bot.web.jobs import WebJobs
from bot.web.server import ConsoleExposed, ConsoleServer, ServeOptions
from bot.config import ConfigError
from engine.models import quiet_loading_bars

log = logging.getLogger(__name__)


def serve_options(config: Config) -> ServeOptions:
    """Where `[web]` says the console listens, and its login (None: no password)."""
    web = config.web
    return ServeOptions(host=web.host, port=web.port, auth=web.login())


def web_command(args) -> int:
    """Load the config (no token), set up logging (the password is one of the secrets it never shows), serve."""
    config = load_config(getattr(args, "config", None))
    options = serve_options(config)
    setup_logging(config.logging, secrets=[options.auth[1]] if options.auth else [])
    quiet_loading_bars()
    signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    try:
        asyncio.run(serve_console(config, options))
    except KeyboardInterrupt:
        pass  # Ctrl+C or SIGTERM: serve_console stopped everything on its way out
    except ConsoleExposed as e:
        raise ConfigError(str(e)) from None
    return 0


async def serve_console(config: Config, options: ServeOptions, *, ready: asyncio.Event | None = None,
                        **service_options) -> None:
    """The services, then the console, until cancelled (Ctrl+C) or the server stops; `ready` is set once it
    listens (tests)."""
    services = await open_services(config, **service_options)
    server: ConsoleServer | None = None
    try:
        server = await start_console(services, options)
        print(f"web console at {server.url} (Ctrl+C stops it)", file=sys.stderr, flush=True)
        if ready is not None:
            ready.set()
        await server.serve_forever()
    finally:
        if server is not None:
            await server.stop()
        await close_services(services)


async def start_console(services: Services, options: ServeOptions) -> ConsoleServer:
    """Start the chores, re-queue what an earlier run left, load the engines in the background, serve the page."""
    await services.housekeeping.start()
    await services.jobs.recover()
    services.engines.start()
    server = ConsoleServer(build_console(WebJobs(services.jobs), services.config, services.sizes), options)
    await server.start()
    return server


async def close_services(services: Services) -> None:
    await services.engines.stop()
    await services.housekeeping.stop()
    services.queue.close()
    await services.store.close()


def _stop_like_ctrl_c(signum, _frame) -> None:
    raise KeyboardInterrupt
