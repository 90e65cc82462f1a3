"""/history: a user's jobs, newest first, ten a page, with ◀ / ▶ buttons (ephemeral)."""
from __future__ import annotations

import logging
from typing import Optional

import discord
from discord import app_commands
from discord.ext import commands

from bot.embeds import history_embed
from bot.permissions import caller_of, history_guild
from db import jobs as store_jobs

log = logging.getLogger(__name__)

PER_PAGE = 10


async def show_page(interaction: discord.Interaction, user_id: int, page: int, *, edit: bool) -> None:
    """One page of `user_id`'s history: all of it for that user and owners; for a role admin, only the jobs made in
    their guild; refused to anyone else. `edit` replaces the message the paging button is on."""
    bot = interaction.client
    caller = caller_of(interaction)
    # 1. Who may look, and at what.
    guild = history_guild(bot.config.discord, caller, user_id)
    # 2. The page (clamped: jobs may have been deleted since the buttons were drawn).
    first = await store_jobs.user_history(bot.store, user_id, 1, PER_PAGE, guild_id=guild)
    page = max(1, min(page, first.pages))
    data = first if page == 1 else await store_jobs.user_history(bot.store, user_id, page, PER_PAGE, guild_id=guild)
    embed = history_embed(data.items, user_id=user_id, page=page, pages=data.pages)
    if guild is not None:
        embed.title = f"{embed.title} · this server's jobs only"
    from bot.views import history_view
    view = history_view(user_id, page, data.pages)
    # 3. A new ephemeral message, or the same one turned to another page.
    if edit:
        await interaction.response.edit_message(embed=embed, view=view)
    elif view is not None:
        await interaction.response.send_message(embed=embed, view=view, ephemeral=True)
    else:
        await interaction.response.send_message(embed=embed, ephemeral=True)


class HistoryCog(commands.Cog):
    def __init__(self, bot: commands.Bot):
        self.bot = bot

    @app_commands.command(name="history", description="Your images, newest first")
    @app_commands.describe(user="Whose history (admins only; default: yours)", page="Page number (default 1)")
    async def history(self, interaction: discord.Interaction, user: Optional[discord.User] = None,
                      page: Optional[app_commands.Range[int, 1]] = None) -> None:
        target = user.id if user is not None else interaction.user.id
        await show_page(interaction, target, page or 1, edit=False)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(HistoryCog(bot))
