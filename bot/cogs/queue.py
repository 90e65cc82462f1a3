"""/queue: the engine's state, what is running and waiting, and where the caller's jobs are."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

import discord
from discord import app_commands
from discord.ext import commands

from bot.embeds import QueueLine, queue_embed
from bot.engine_state import EngineState, EngineStatus
from db import jobs as store_jobs
from db.models import WEB

if TYPE_CHECKING:
    from db.session import Store
    from engine.queue import JobQueue

log = logging.getLogger(__name__)


class QueueFeature(commands.Cog, name="Queue"):
    def __init__(self, queue: "JobQueue", store: "Store", engine_state: Callable[[], EngineState]):
        self.queue = queue
        self.store = store
        self.engine_state = engine_state

    @app_commands.command(name="queue", description="Show the jobs waiting to run and where yours are")
    async def show_queue(self, interaction: discord.Interaction) -> None:
        engine = self.engine_state()
        lines = await self.queue_lines(engine)
        embed = queue_embed(lines, caller_id=interaction.user.id, engine=engine)
        await interaction.response.send_message(embed=embed, ephemeral=True)

    async def queue_lines(self, engine: EngineState) -> list[QueueLine]:
        """Running jobs first, then the waiting ones in fair order, with owners from the store. No ETAs unless the
        engine is ready (while the model loads or after it failed, any estimate would be made up)."""
        ready = engine.status is EngineStatus.READY
        running = list(self.queue.running())
        waiting = [q.job_id for q in self.queue.waiting()]
        records = await store_jobs.get_jobs(self.store, running + waiting)
        lines = []
        for pos, job_id in [(None, j) for j in running] + list(enumerate(waiting, start=1)):
            job = records.get(job_id)
            if job is None:
                continue
            lines.append(QueueLine(position=pos, job_id=job_id, user_id=job.user_id, prompt=job.prompt,
                                   eta_s=self.queue.eta_s(job_id) if ready else None,
                                   web_user=job.user_name if job.source == WEB else None))
        return lines
