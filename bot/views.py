"""Buttons and the Edit modal. Every button is a `DynamicItem` whose custom_id carries the job id
(`fluxbot:<action>:<job id>`), so buttons keep working after a restart: a click is resolved from the database.

Callbacks only parse the click and hand it to `bot.actions`; errors go through `bot.replies.report_error`
(discord.py logs and swallows DynamicItem callback errors, so each callback catches its own).
"""
from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import discord
from discord.ui import Button, DynamicItem

from bot import actions
from bot.replies import guarded

if TYPE_CHECKING:
    from db.records import JobRecord

log = logging.getLogger(__name__)

PREFIX = "fluxbot"


def custom_id(action: str, *parts: int) -> str:
    return ":".join([PREFIX, action, *map(str, parts)])


def _job_id(match: re.Match[str]) -> int:
    return int(match["job"])


class RerollButton(DynamicItem[Button], template=r"fluxbot:reroll:(?P<job>\d+)"):
    """🎲 Same everything, a new random seed; the new job belongs to whoever pressed."""

    def __init__(self, job_id: int):
        super().__init__(Button(label="Reroll", emoji="🎲", style=discord.ButtonStyle.secondary,
                                custom_id=custom_id("reroll", job_id)))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(_job_id(match))

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, lambda: actions.reroll(interaction, self.job_id))


class VaryButton(DynamicItem[Button], template=r"fluxbot:vary:(?P<job>\d+)"):
    """🔀 The same seed with a random variation seed at a subtle strength."""

    def __init__(self, job_id: int):
        super().__init__(Button(label="Vary", emoji="🔀", style=discord.ButtonStyle.secondary,
                                custom_id=custom_id("vary", job_id)))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(_job_id(match))

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, lambda: actions.vary(interaction, self.job_id))


class EditButton(DynamicItem[Button], template=r"fluxbot:edit:(?P<job>\d+)"):
    """✏️ Opens a modal prefilled with the job's prompt, seed and steps."""

    def __init__(self, job_id: int):
        super().__init__(Button(label="Edit", emoji="✏️", style=discord.ButtonStyle.secondary,
                                custom_id=custom_id("edit", job_id)))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(_job_id(match))

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, lambda: actions.open_edit(interaction, self.job_id))


class DeleteButton(DynamicItem[Button], template=r"fluxbot:delete:(?P<job>\d+)"):
    """🗑 Removes the result message (requester or admins); the record stays."""

    def __init__(self, job_id: int):
        super().__init__(Button(label="Delete", emoji="🗑️", style=discord.ButtonStyle.danger,
                                custom_id=custom_id("delete", job_id)))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(_job_id(match))

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, lambda: actions.delete(interaction, self.job_id))


class CancelButton(DynamicItem[Button], template=r"fluxbot:cancel:(?P<job>\d+)"):
    """Stops a queued or running job (requester or admins)."""

    def __init__(self, job_id: int):
        super().__init__(Button(label="Cancel", emoji="✖️", style=discord.ButtonStyle.secondary,
                                custom_id=custom_id("cancel", job_id)))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(_job_id(match))

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, lambda: actions.cancel(interaction, self.job_id))


class HistoryPageButton(DynamicItem[Button], template=r"fluxbot:hist:(?P<user>\d+):(?P<page>\d+):(?P<dir>[pn])"):
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
        from bot.cogs.history import show_page  # the cog owns the page layout
        await guarded(interaction, lambda: show_page(interaction, self.user_id, self.page, edit=True))


DYNAMIC_ITEMS = (RerollButton, VaryButton, EditButton, DeleteButton, CancelButton, HistoryPageButton)


def result_view(job_id: int) -> discord.ui.View:
    """The four buttons under a result."""
    view = discord.ui.View(timeout=None)
    for cls in (RerollButton, VaryButton, EditButton, DeleteButton):
        view.add_item(cls(job_id))
    return view


def status_view(job_id: int) -> discord.ui.View:
    """The Cancel button under a status message."""
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


def history_view(user_id: int, page: int, pages: int) -> discord.ui.View | None:
    if pages <= 1:
        return None
    view = discord.ui.View(timeout=None)
    view.add_item(HistoryPageButton(user_id, max(1, page - 1), "p", disabled=page <= 1))
    view.add_item(HistoryPageButton(user_id, min(pages, page + 1), "n", disabled=page >= pages))
    return view


EDIT_FORM = re.compile(r"fluxbot:editmodal:(?P<job>\d+):(?P<nonce>\d+)")
TEXT_INPUT_MAX_CHARS = 4000  # Discord's longest text input (its prefilled value included)


class EditModal(discord.ui.Modal):
    """✏️ Edit: prompt, seed and steps prefilled from the job; size, guidance and count are kept.

    The submit is handled statelessly by `handle_modal_submit` (from `FluxBot.on_interaction`), not by this
    object: a form opened before a restart still works, and two people editing the same job at once each
    get their own form (the custom_id carries the opening interaction's id)."""

    def __init__(self, job: "JobRecord", *, opener_id: int, max_prompt_chars: int):
        super().__init__(title=f"Edit job #{job.id}", timeout=15 * 60,
                         custom_id=custom_id("editmodal", job.id, opener_id))
        # The prompt is prefilled up to what the form takes (Discord refuses the whole form otherwise: 4000, or a
        # lower `[limits] max_prompt_chars`); the label says when the prompt had to be cut.
        room = min(TEXT_INPUT_MAX_CHARS, max_prompt_chars)
        cut = len(job.prompt) > room
        self.add_item(discord.ui.TextInput(label=f"Prompt (cut to {room} characters)" if cut else "Prompt",
                                           custom_id="prompt",
                                           style=discord.TextStyle.paragraph, default=job.prompt[:room],
                                           max_length=room, required=True))
        self.add_item(discord.ui.TextInput(label="Seed (-1 = random)", custom_id="seed", default=str(job.seed),
                                           max_length=12, required=False))
        self.add_item(discord.ui.TextInput(label="Steps (1-50)", custom_id="steps", default=str(job.steps),
                                           max_length=3, required=False))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        pass  # answered by handle_modal_submit


def submitted_values(data: dict) -> dict[str, str]:
    """custom_id -> value of every text input in a modal submit payload (rows or labels)."""
    values: dict[str, str] = {}

    def walk(components: list) -> None:
        for comp in components or []:
            if comp.get("type") == 4 and comp.get("custom_id"):
                values[comp["custom_id"]] = str(comp.get("value") or "")
            walk(comp.get("components") or [])
            if isinstance(comp.get("component"), dict):
                walk([comp["component"]])

    walk(data.get("components") or [])
    return values


async def handle_modal_submit(interaction: discord.Interaction) -> bool:
    """Answer a submitted Edit form; False if the modal is not fluxbot's."""
    data = interaction.data or {}
    match = EDIT_FORM.fullmatch(str(data.get("custom_id", "")))
    if match is None:
        return False
    values = submitted_values(data)
    await guarded(interaction, lambda: actions.submit_edit(interaction, int(match["job"]), values.get("prompt", ""),
                                                           values.get("seed", ""), values.get("steps", "")))
    return True
