"""Interaction tokens are secrets with a 15-minute life: the store keeps a job's token only while it can be used.

A job's token (it lets the bot post and edit as the interaction's reply, and anyone holding it could too) is
stored so that a result finished within 15 minutes goes out as the interaction's followup, even after a restart.
It is cleared when the job is delivered (`db.jobs.mark_delivered`) and, for every other job (cancelled, failed
without notice, still waiting), once Discord's 15 minutes are over: at start-up and then every minute by
`forget_periodically`, which the bot runs as a background task after a first pass at start-up.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from bot.delivery import TOKEN_LIFETIME
from db import jobs as store_jobs

if TYPE_CHECKING:
    from db.session import Store

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 60.0  # a token outlives its use by at most this much


async def forget_expired_tokens(store: "Store", now: datetime | None = None) -> int:
    """Clear every stored interaction token older than Discord's token lifetime; returns how many."""
    now = now or datetime.now(timezone.utc)
    return await store_jobs.forget_interaction_tokens(store, now - TOKEN_LIFETIME)


async def forget_periodically(store: "Store", interval_s: float = SWEEP_INTERVAL_S) -> None:
    """`forget_expired_tokens` every `interval_s` seconds until cancelled (start-up runs the first pass itself);
    a failing pass (a busy store) is logged and the next one still runs."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await forget_expired_tokens(store)
        except Exception:  # noqa: BLE001  (one bad pass must not stop the sweeps for the bot's lifetime)
            log.warning("clearing expired interaction tokens failed; trying again in %.0f s", interval_s,
                        exc_info=True)
