"""After a restart: each owner of a job that was still waiting or running is told, in its channel, that it is back
in the queue; that message then shows the job's status (the old reply's token may have expired meanwhile)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord

from bot.embeds import StatusLine
from bot.literal import echo_mentions
from bot.tracker import JobTracker
from bot.views import JobRef, status_view
from db import jobs as store_jobs
from db.models import WEB
from engine.job_status import JobStatus

if TYPE_CHECKING:
    from db.records import JobRecord
    from db.session import Store
    from engine.queue import JobQueue

log = logging.getLogger(__name__)


class RestartNotices:
    def __init__(self, client: discord.Client, store: "Store", queue: "JobQueue", tracker: JobTracker, *,
                 identity: str | None):
        self.client = client
        self.store = store
        self.queue = queue
        self.tracker = tracker
        self.identity = identity  # the database's, in the Cancel button's custom_id

    async def announce(self, jobs: list["JobRecord"]) -> None:
        """Tell each owner; one job's trouble never stops the start-up, nor the other jobs."""
        for job in jobs:
            try:
                await self._announce(job)
            except Exception:
                log.exception("job %d: telling its owner about the restart failed; going on with the next job", job.id)
                self.tracker.without_status_message(job.id)

    async def _announce(self, job: "JobRecord") -> None:
        if job.source == WEB:
            return  # a web console job: its page (or the console's history) shows it; Discord has nowhere to say it
        # 1. The tracker follows it from its place in the queue.
        line = self.tracker.follow(job, StatusLine(JobStatus.QUEUED, position=self.queue.position(job.id),
                                                   eta_s=self.queue.eta_s(job.id)))
        if job.channel_id is None:
            self.tracker.without_status_message(job.id)
            return
        # 2. A channel message saying why it exists, then the job's line; it becomes the job's status message.
        prefix = f"<@{job.user_id}> The bot restarted; job #{job.id} is back in the queue.\n"
        try:
            msg = await self.client.get_partial_messageable(job.channel_id).send(
                prefix + line, view=status_view(JobRef(job.id, self.identity)),
                allowed_mentions=echo_mentions(job.user_id))
        except discord.HTTPException as e:
            log.warning("job %d: could not tell user %d about the restart (HTTP %s)", job.id, job.user_id,
                        e.status)
            self.tracker.without_status_message(job.id)
            return
        saved = await store_jobs.set_status_message(self.store, job.id, msg.id)
        await self.tracker.attach_channel_message(job.id, job.channel_id, msg.id, prefix=prefix, saved=saved)
