"""Which job a button, a form or a job number means, read from the store; refused with a message for the user when it
means none here (a job that does not exist any more, a button of another database, a button on an older message)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord

from bot.replies import UserFacingError
from bot.views import JobRef
from db import jobs as store_jobs

if TYPE_CHECKING:
    from db.records import JobRecord
    from db.session import Store

log = logging.getLogger(__name__)

FOREIGN_BUTTON = ("This button comes from an earlier database of this bot (it was reset or replaced since), so it "
                  "no longer stands for any job here and nothing was done. /history lists your images.")


class JobLookup:
    """Jobs of this database (`identity`: the one in the custom_ids of the buttons it made)."""

    def __init__(self, store: "Store", identity: str | None):
        self.store = store
        self.identity = identity

    async def job(self, job_id: int) -> "JobRecord":
        """The job, or a refusal saying that it does not exist (any more)."""
        job = await store_jobs.get_job(self.store, job_id)
        if job is None:
            raise UserFacingError(f"Job #{job_id} does not exist (any more).")
        return job

    async def job_of(self, ref: JobRef) -> "JobRecord":
        """The job a button or form names, once it is known to mean a job of this database."""
        self.check_this_database(ref)
        return await self.job(ref.job_id)

    def check_this_database(self, ref: JobRef) -> None:
        """A button or form made by another database (its identity differs) means no job of this one."""
        if ref.identity is not None and ref.identity != self.identity:
            log.info("button of database %s pressed; this database is %s", ref.identity, self.identity)
            raise UserFacingError(FOREIGN_BUTTON)


def check_own_message(interaction: discord.Interaction, job: "JobRecord") -> None:
    """Delete and Cancel act only from the job's own message: its status or result message, or a later copy of it
    (/show posts one). Every message of a job comes after the request that made it (its interaction: a snowflake,
    on Discord's clock like the message's), so a message older than that holds the button of an earlier job with
    the same number (a database reset, or restored from a backup, issued the number again)."""
    message = interaction.message
    if message is None or message.id in (job.status_message_id, job.result_message_id):
        return
    asked_at = discord.utils.snowflake_time(job.interaction_id) if job.interaction_id else job.created_at
    if message.created_at >= asked_at:
        return
    log.info("job %d: button on message %d, older than the job, refused", job.id, message.id)
    raise UserFacingError(f"This button is on a message older than job #{job.id}: it belongs to an earlier job with "
                          f"the same number (the bot's database was reset or restored since), so nothing was done.")
