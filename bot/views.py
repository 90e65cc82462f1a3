"""Buttons and the Edit modal. Every job button is a `JobButton` (one `DynamicItem`) whose custom_id names the
action, the identity of the database that issued the job id, and the job id (`fluxbot:<action>:<identity>:<job
id>`), so buttons keep working after a restart (a click is resolved from the database) and a button of a database
that was reset since is recognised as such. Buttons posted before identities existed (`fluxbot:<action>:<job id>`)
keep working.

Components never import behaviour: a click is parsed here and handed to the handler the client holds for its action
(`FluxBot.job_buttons`, filled by the feature that owns those buttons: `ImagineFeature.job_buttons()` in
bot/cogs/imagine.py), so `JobButton.callback` → `ImagineFeature.reroll` is the whole way from a click to the job it
creates. A submitted Edit form is parsed here (`edit_form`) and answered by the imagine feature's `on_interaction`
listener. Errors go through `bot.replies.report_error` (discord.py logs and swallows DynamicItem callback errors, so
each callback catches its own). The /history paging button lives with its feature, in `bot/cogs/history.py`.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Mapping, Protocol

import discord
from discord.ui import Button, DynamicItem

from bot.replies import guarded
from engine.image_files import IDENTITY

if TYPE_CHECKING:
    from db.records import JobRecord

log = logging.getLogger(__name__)

PREFIX = "fluxbot"


@dataclass(frozen=True)
class JobRef:
    """What a button or form names: a job id and the identity of the database that issued it (None on buttons
    posted before identities existed: they are taken to mean this database)."""
    job_id: int
    identity: str | None = None

    def parts(self) -> list[str]:
        return [self.identity, str(self.job_id)] if self.identity else [str(self.job_id)]


def custom_id(action: str, *parts: int | str) -> str:
    return ":".join([PREFIX, action, *map(str, parts)])


def job_custom_id(action: str, ref: JobRef, *more: int) -> str:
    """`fluxbot:<action>:<identity>:<job id>[:<more>…]` (≤ 100 characters: 8 + 19 digits at most per part)."""
    return custom_id(action, *ref.parts(), *more)


# action -> (label, emoji, style); the action's behaviour is the handler `FluxBot.job_buttons[action]`. Actions are
# only ever added: a message posted by an older version keeps its buttons (its "vary" is today's Vary (Subtle)).
JOB_BUTTONS = {
    "reroll": ("Reroll", "🎲", discord.ButtonStyle.secondary),   # same everything, a new random seed
    "vary": ("Vary (Subtle)", "🔀", discord.ButtonStyle.secondary),        # the same seed, a subtle variation
    "varystrong": ("Vary (Strong)", "🔀", discord.ButtonStyle.secondary),  # the same seed, a strong variation
    "upscale": ("Upscale ×2", "🔍", discord.ButtonStyle.secondary),        # twice as large, refined (img2img)
    "edit": ("Edit", "✏️", discord.ButtonStyle.secondary),       # a form prefilled with prompt, seed, steps
    "delete": ("Delete", "🗑️", discord.ButtonStyle.danger),      # removes the result message; the record stays
    "cancel": ("Cancel", "✖️", discord.ButtonStyle.secondary),   # stops a queued or running job
}
_REF = rf"(?:(?P<identity>{IDENTITY.pattern}):)?(?P<job>\d+)"


JobButtonHandler = Callable[[discord.Interaction, JobRef], Awaitable[None]]


class JobButtonHost(Protocol):
    """The client, as a job button sees it: a handler per action (`ImagineFeature.job_buttons()`)."""
    job_buttons: Mapping[str, JobButtonHandler]


class JobButton(DynamicItem[Button], template=rf"{PREFIX}:(?P<action>{'|'.join(JOB_BUTTONS)}):{_REF}"):
    """🎲 Reroll, 🔀 Vary, ✏️ Edit, 🗑 Delete (under a result) and Cancel (under a status message)."""

    def __init__(self, action: str, ref: JobRef):
        label, emoji, style = JOB_BUTTONS[action]
        super().__init__(Button(label=label, emoji=emoji, style=style, custom_id=job_custom_id(action, ref)))
        self.action, self.ref = action, ref

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(match["action"], JobRef(int(match["job"]), match["identity"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        host: JobButtonHost = interaction.client  # type: ignore[assignment]
        handler = host.job_buttons[self.action]  # e.g. ImagineFeature.reroll
        await guarded(interaction, lambda: handler(interaction, self.ref))


RESULT_ACTIONS = ("reroll", "vary", "varystrong", "upscale", "edit", "delete")


def result_view(ref: JobRef, *, upscale: bool = True) -> discord.ui.View:
    """The buttons under a result: 🎲 Reroll, 🔀 Vary (Subtle), 🔀 Vary (Strong), 🔍 Upscale ×2 (when the image can
    grow: `upscale`), then ✏️ Edit and 🗑 Delete on a second row."""
    view = discord.ui.View(timeout=None)
    for action in RESULT_ACTIONS:
        if action == "upscale" and not upscale:
            continue
        button = JobButton(action, ref)
        button.row = 1 if action in ("edit", "delete") else 0
        view.add_item(button)
    return view


def status_view(ref: JobRef) -> discord.ui.View:
    """The Cancel button under a status message."""
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton("cancel", ref))
    return view


EDIT_FORM = re.compile(rf"{PREFIX}:editmodal:{_REF}:(?P<nonce>\d+)")
TEXT_INPUT_MAX_CHARS = 4000  # Discord's longest text input (its prefilled value included)


class EditModal(discord.ui.Modal):
    """✏️ Edit: prompt, seed and steps prefilled from the job; size, guidance and count are kept.

    The submit is handled statelessly by the imagine feature's `on_interaction` listener (parsed by `edit_form`),
    not by this object: a form opened before a restart still works, and two people editing the same job at once each
    get their own form (the custom_id carries the opening interaction's id)."""

    def __init__(self, job: "JobRecord", *, opener_id: int, max_prompt_chars: int, identity: str | None = None):
        super().__init__(title=f"Edit job #{job.id}", timeout=15 * 60,
                         custom_id=job_custom_id("editmodal", JobRef(job.id, identity), opener_id))
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
        pass  # answered by ImagineFeature.on_interaction (bot/cogs/imagine.py)


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


@dataclass(frozen=True)
class EditForm:
    """A submitted Edit form: the job it edits and what the user typed."""
    ref: JobRef
    prompt: str
    seed: str
    steps: str


def edit_form(interaction: discord.Interaction) -> EditForm | None:
    """The Edit form this modal submit carries; None if the modal is not fluxbot's."""
    data = interaction.data or {}
    match = EDIT_FORM.fullmatch(str(data.get("custom_id", "")))
    if match is None:
        return None
    values = submitted_values(data)
    return EditForm(JobRef(int(match["job"]), match["identity"]), values.get("prompt", ""), values.get("seed", ""),
                    values.get("steps", ""))
