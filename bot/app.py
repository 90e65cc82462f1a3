"""Building the bot: the services first, then the Discord client that wires them (discord.py's advanced_startup).

`build_bot(config)` is what `python -m bot run` (bot/run_cmd.py), the tests and the load bench call:
1. the config's choices that Discord shows (`[discord] sizes`), checked before anything opens;
2. the store (migrated to head) and this database's identity;
3. the queue (one worker per device), the jobs service, the engines (loaded later, in the background) and the
   background chores;
4. `FluxBot(services)`, which makes its messaging and features from them (bot/client.py).
Nothing of this waits for Discord; the client connects when it is started.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from bot.client import FluxBot
from bot.config import Config
from bot.engines import Engines
from bot.housekeeping import Housekeeping
from bot.service import JobService
from bot.bot_services import Services
from bot.validation import parse_sizes
from db import instance
from db.session import Store, open_store
from engine.devices import resolve_devices
from engine.image_files import IdMark
from engine.queue import JobQueue

log = logging.getLogger(__name__)


async def open_services(config: Config, *, engine_loader: Callable[[Any, str], Any] | str | None = None,
                        close_engines: bool = True, freeze_gc: bool = False) -> Services:
    """The services of a bot (see `bot.engines.Engines` for the keyword arguments). A bad size in the config is a
    ConfigError before anything is opened."""
    # 1. What Discord will show.
    sizes = parse_sizes(config.discord.sizes)
    # 2. The store and its identity.
    store = await open_store(config.database.url, echo=config.database.echo,
                             busy_timeout_s=config.database.busy_timeout_s)
    try:
        identity = await database_identity(store, config.engine.images_dir)
        # 3. The queue, the jobs service, the engines, the chores.
        devices = await asyncio.to_thread(resolve_devices, config.engine.devices)
        queue = JobQueue(workers=len(devices))
        jobs = JobService(store, queue, [], config.limits, config.discord.banned_words, config.engine.images_dir,
                          identity=identity)
        engines = Engines(config.engine, queue, jobs, devices, loader=engine_loader, close_engines=close_engines,
                          freeze_gc=freeze_gc, ray=config.ray)
    except BaseException:
        await store.close()
        raise
    return Services(config=config, sizes=sizes, store=store, identity=identity, queue=queue, jobs=jobs,
                    engines=engines, housekeeping=Housekeeping(config, store, identity))


async def build_bot(config: Config, *, engine_loader: Callable[[Any, str], Any] | str | None = None,
                    close_engines: bool = True, sync_commands: bool = True, freeze_gc: bool = False) -> FluxBot:
    """A bot over fresh services; `sync_commands=False` leaves Discord's command list alone."""
    services = await open_services(config, engine_loader=engine_loader, close_engines=close_engines,
                                   freeze_gc=freeze_gc)
    return FluxBot(services, sync_commands=sync_commands)


async def database_identity(store: Store, images_dir: str) -> str:
    """This database's identity; job ids it issued before a restore from an older backup stay unused."""
    identity = await instance.identity(store)
    highest = await asyncio.to_thread(IdMark(images_dir).highest, identity)
    before = await instance.skip_job_ids_through(store, highest)
    if before is not None:
        log.warning("the database would issue job id %d again, but the images folder holds images of its jobs up "
                    "to %d: it was restored from an older backup. New jobs start at %d, so that the buttons and "
                    "files of those jobs keep their meaning", before, highest, highest + 1)
    log.info("database identity %s", identity)
    return identity
