"""The bot's background chores while it runs: clearing expired interaction tokens (bot.token_expiry), pruning old
images ([storage], engine.retention) and then the stored inputs no job needs any more (bot.input_retention), and
watching that the database file is still the one it opened (db.instance).
`FluxBot.setup_hook` starts them, `FluxBot.close` stops them."""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from bot.input_retention import prune_stored_inputs
from bot.token_expiry import forget_expired_tokens, forget_periodically
from db import instance
from engine.retention import prune_periodically

if TYPE_CHECKING:
    from bot.config import Config
    from db.session import Store

log = logging.getLogger(__name__)

STORE_WATCH_S = 30.0  # how often an idle bot checks that its database file is still the one it opened


class Housekeeping:
    def __init__(self, config: "Config", store: "Store", identity: str):
        self.config = config
        self.store = store
        self.identity = identity
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Clear the tokens that expired while the bot was down (before recovery reads the jobs), then run the
        chores in the background."""
        storage = self.config.storage
        await forget_expired_tokens(self.store)
        self._tasks = [
            asyncio.create_task(forget_periodically(self.store), name="fluxbot-forget-tokens"),
            asyncio.create_task(instance.watch(self.store, self.identity, STORE_WATCH_S),
                                name="fluxbot-watch-database"),
            # Image retention: prunes old PNGs (records stay and /show regenerates them), then the inputs that no
            # job needs any more.
            asyncio.create_task(prune_periodically(self.config.engine.images_dir, storage.max_image_age_days,
                                                   int(storage.max_images_gib * 2**30),
                                                   storage.prune_interval_min * 60, then=self.prune_inputs),
                                name="fluxbot-prune-images"),
        ]

    async def prune_inputs(self):
        """The stored input images no job needs any more (bot.input_retention), after each image pass."""
        return await prune_stored_inputs(self.store, self.config.engine.images_dir,
                                         self.config.storage.max_image_age_days)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
