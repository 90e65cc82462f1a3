"""`python -m bot run`: load the config (the token is required), set up logging, build the bot, run until stopped.

Discord out of reach is one line (here and in the log file) and exit status 1, not a traceback. Ctrl+C and SIGTERM
(systemd stop, docker stop) close the bot the same way: workers stopped, gateway closed, store closed.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import sys

import aiohttp
import discord

from bot.app import build_bot
from bot.client import intents, without_voice
from bot.config import Config, ConfigError, load_config
from bot.errors import CannotStart
from bot.logging_setup import setup_logging
from bot.web.exposure import ServeOptions
from bot.web.standalone import embedded_console, web_options
from engine.models import quiet_loading_bars

log = logging.getLogger(__name__)

# Errors that mean Discord could not be reached at all: DNS, refused or reset connections, proxies, TLS, time-outs.
UNREACHABLE = (aiohttp.ClientConnectionError, asyncio.TimeoutError, discord.GatewayNotFound)


def run_command(args) -> int:
    # 1. Config and logging (the token is one of the secrets the log never shows).
    config = load_config(getattr(args, "config", None), require_token=True)
    token = config.discord.token.reveal()
    web = web_options(config)  # [web] enabled: the console beside the bot, its address and login checked now
    handles = setup_logging(config.logging, secrets=[token, *(web.secrets if web else [])])
    quiet_loading_bars()  # per-file loading bars would fill the log
    signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    print("connecting to Discord…", file=sys.stderr, flush=True)
    # 2. Run until stopped; what Discord refuses is named.
    try:
        asyncio.run(_serve(config, token, web))
    except KeyboardInterrupt:
        pass  # Ctrl+C or SIGTERM: `_serve` closed the bot on its way out
    except discord.LoginFailure:
        raise ConfigError("Discord refused the bot token ([discord] token or env DISCORD_TOKEN): copy it again "
                          "from the Developer Portal → your application → Bot → Reset Token") from None
    except discord.PrivilegedIntentsRequired as e:  # not expected: fluxbot asks for none
        raise ConfigError(f"Discord refused the gateway intents: {e}") from None
    except UNREACHABLE as e:
        message = f"cannot reach Discord ({unreachable_reason(e)}): check network, firewall or proxy"
        handles.fatal(message)  # the log file keeps the reason; the console gets it once, from bot.cli
        raise CannotStart(message) from None
    return 0


async def _serve(config: Config, token: str, web: ServeOptions | None = None) -> None:
    """Discord first, then the services and the bot (bot/app.py) with the web console when `[web]` enables it (on
    the same services), then the connection."""
    # 1. The token and the way to Discord, before anything is opened: an owner whose bot cannot reach Discord (or
    #    whose token is wrong) reads one line, and no database or folder was made for nothing.
    without_voice()
    async with discord.Client(intents=intents()) as probe:
        await probe.login(token)
    # 2. The bot over its services; `async with` closes it however it ends (as discord.py's `Client.run` does).
    bot = await build_bot(config, freeze_gc=True)
    async with bot, embedded_console(bot.services, web):
        await bot.start(token)


def _stop_like_ctrl_c(signum, _frame) -> None:
    """SIGTERM closes the bot as Ctrl+C does: the KeyboardInterrupt ends `asyncio.run`, which cancels `_serve`, and
    leaving `async with bot` closes it."""
    raise KeyboardInterrupt


def unreachable_reason(err: BaseException) -> str:
    """A short reason: 'discord.com:443: Name or service not known', not aiohttp's whole repr."""
    if isinstance(err, aiohttp.ClientConnectorError):
        cause = err.os_error
        why = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        return f"{err.host}:{err.port}: {why}"
    if isinstance(err, asyncio.TimeoutError):
        return "timed out"
    return str(err) or type(err).__name__
