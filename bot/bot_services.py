"""`Services`: what the bot is built on, made before it connects (bot/app.py) and handed to `FluxBot`
(bot/client.py)."""
from __future__ import annotations

from dataclasses import dataclass

from bot.config import Config
from bot.engines import Engines
from bot.housekeeping import Housekeeping
from bot.service import JobService
from bot.validation import SizeChoice
from db.session import Store
from engine.queue import JobQueue


@dataclass(frozen=True)
class Services:
    """Everything the bot is built on. The bot closes them when it closes."""
    config: Config
    sizes: list[SizeChoice]  # the /imagine size choices, from [discord] sizes
    store: Store
    identity: str  # this database's identity, in new custom_ids and file names (db.instance)
    queue: JobQueue
    jobs: JobService
    engines: Engines
    housekeeping: Housekeeping
