"""/history: a user's jobs, newest first, ten a page, with ◀ / ▶ buttons (ephemeral).

The feature in one file: the command, the page (`HistoryFeature.show_page`) and its paging button
(`HistoryPageButton`, a persistent DynamicItem: `fluxbot:hist:<user>:<page>:<p|n>`, which the client registers with
the job buttons). A click goes from `HistoryPageButton.callback` to this feature (the cog the client holds under its
name) and `show_page`."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

import discord
from discord import app_commands
from discord.ext import commands
from discord.ui import Button, DynamicItem

from bot.embeds import history_embed
from bot.permissions import caller_of, history_guild
from bot.replies import guarded
from bot.views import PREFIX
from db import jobs as store_jobs

if TYPE_CHECKING:
    from bot.config import DiscordSettings
    from db.session import Store

log = logging.getLogger(__name__)

PER_PAGE = 10


class HistoryFeature(commands.Cog, name="History"):
    def __init__(self, settings: "DiscordSettings", store: "Store"):
        self.settings = settings
        self.store = store

    @app_commands.command(name="history", description="Your images, newest first")
    @app_commands.describe(user="Whose history (admins only; default: yours)", page="Page number (default 1)")
    async def history(self, interaction: discord.Interaction, user: Optional[discord.User] = None,
                      page: Optional[app_commands.Range[int, 1]] = None) -> None:
        target = user.id if user is not None else interaction.user.id
        await self.show_page(interaction, target, page or 1, edit=False)

    async def show_page(self, interaction: discord.Interaction, user_id: int, page: int, *, edit: bool) -> None:
        """One page of `user_id`'s history: all of it for that user and owners; for a role admin, only the jobs made
        in their guild; refused to anyone else. `edit` replaces the message the paging button is on."""
        # 1. Who may look, and at what.
        guild = history_guild(self.settings, caller_of(interaction), user_id)
        # 2. The page (clamped: jobs may have been deleted since the buttons were drawn).
        first = await store_jobs.user_history(self.store, user_id, 1, PER_PAGE, guild_id=guild)
        page = max(1, min(page, first.pages))
        data = first if page == 1 else await store_jobs.user_history(self.store, user_id, page, PER_PAGE,
                                                                     guild_id=guild)
        embed = history_embed(data.items, user_id=user_id, page=page, pages=data.pages)
        if guild is not None:
            embed.title = f"{embed.title} · this server's jobs only"
        view = history_view(user_id, page, data.pages)
        # 3. A new ephemeral message, or the same one turned to another page.
        if edit:
            await interaction.response.edit_message(embed=embed, view=view)
        elif view is not None:
            await interaction.response.send_message(embed=embed, view=view, ephemeral=True)
        else:
            await interaction.response.send_message(embed=embed, ephemeral=True)


class HistoryPageButton(DynamicItem[Button], template=rf"{PREFIX}:hist:(?P<user>\d+):(?P<page>\d+):(?P<dir>[pn])"):
    """◀ / ▶ of /history: the user whose history it is and the page to show."""

    def __init__(self, user_id: int, page: int, direction: str, *, disabled: bool = False):
        label = "◀ Newer" if direction == "p" else "Older ▶"
        super().__init__(Button(label=label, style=discord.ButtonStyle.secondary, disabled=disabled,
                                custom_id=f"{PREFIX}:hist:{user_id}:{page}:{direction}"))
        self.user_id, self.page = user_id, page

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(int(match["user"]), int(match["page"]), match["dir"])

    async def callback(self, interaction: discord.Interaction) -> None:
        feature: HistoryFeature = interaction.client.get_cog(HistoryFeature.__cog_name__)  # type: ignore[attr-defined]
        await guarded(interaction, lambda: feature.show_page(interaction, self.user_id, self.page, edit=True))


def history_view(user_id: int, page: int, pages: int) -> discord.ui.View | None:
    """◀ / ▶ under a page; none when everything fits on one."""
    if pages <= 1:
        return None
    view = discord.ui.View(timeout=None)
    view.add_item(HistoryPageButton(user_id, max(1, page - 1), "p", disabled=page <= 1))
    view.add_item(HistoryPageButton(user_id, min(pages, page + 1), "n", disabled=page >= pages))
    return view
