"""/queue: the engine's state, what is running and waiting, and where the caller's jobs are."""
from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.embeds import QueueLine, queue_embed
from bot.engine_state import EngineStatus
from db import jobs as store_jobs

log = logging.getLogger(__name__)


async def queue_lines(bot) -> list[QueueLine]:
    """Running jobs first, then the waiting ones in FIFO order, with owners from the store. No ETAs unless the
    engine is ready (while the model loads or after it failed, any estimate would be made up)."""
    queue = bot.queue
    ready = bot.engine_state.status is EngineStatus.READY
    running = list(queue.running())
    waiting = [q.job_id for q in queue.waiting()]
    records = await store_jobs.get_jobs(bot.store, running + waiting)
    lines = []
    for pos, job_id in [(None, j) for j in running] + list(enumerate(waiting, start=1)):
        job = records.get(job_id)
        if job is None:
            continue
        lines.append(QueueLine(position=pos, job_id=job_id, user_id=job.user_id, prompt=job.prompt,
                               eta_s=queue.eta_s(job_id) if ready else None))
    return lines


class QueueCog(commands.Cog):
    def __init__(self, bot: commands.Bot):
        self.bot = bot

    @app_commands.command(name="queue", description="Show the jobs waiting to run and where yours are")
    async def queue(self, interaction: discord.Interaction) -> None:
        lines = await queue_lines(self.bot)
        embed = queue_embed(lines, caller_id=interaction.user.id, engine=self.bot.engine_state)
        await interaction.response.send_message(embed=embed, ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(QueueCog(bot))
