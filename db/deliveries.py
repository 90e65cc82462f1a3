"""Giving up on a delivery Discord keeps refusing.

A result whose channel was deleted, whose guild removed the bot, or whose user closed their DMs gets 403/404 every
time; without a bound the bot would try again at every start-up forever. `record_refusal` counts the refusals in
the job's row and, at `limit`, records why the bot stops trying (`undeliverable_reason`): the job stays `done`,
`/show` still posts or regenerates it, and `db.jobs.undelivered_jobs` no longer lists it.
"""
from __future__ import annotations

import logging

from sqlalchemy import update

from db.models import Job
from db.session import Store

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 500


async def record_refusal(store: Store, job_id: int, reason: str, *, limit: int) -> int:
    """Count one refused delivery of `job_id`; at `limit` refusals mark it undeliverable with `reason`. Returns
    the number of refusals so far (0 if there is no such job)."""
    async with store.session() as s, s.begin():
        count = await s.scalar(update(Job).where(Job.id == job_id)
                               .values(delivery_refusals=Job.delivery_refusals + 1)
                               .returning(Job.delivery_refusals))
        if count is not None and count >= limit:
            await s.execute(update(Job).where(Job.id == job_id, Job.undeliverable_reason.is_(None))
                            .values(undeliverable_reason=reason[:MAX_REASON_CHARS]))
    return int(count or 0)


async def mark_undeliverable(store: Store, job_id: int, reason: str) -> bool:
    """Stop trying to deliver `job_id` at once (e.g. its image file is gone), saying why. False if it was already."""
    async with store.session() as s, s.begin():
        result = await s.execute(update(Job).where(Job.id == job_id, Job.undeliverable_reason.is_(None))
                                 .values(undeliverable_reason=reason[:MAX_REASON_CHARS]))
    return result.rowcount == 1
