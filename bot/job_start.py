"""Starting a job from an interaction: permissions, admission in the user's turn, a fast first answer, the status
message.

Every feature that makes a job (a command, a button, a form) hands `JobStarter.start` a `Plan`: what the request asks
for, read inside the user's turn (its parent job, for a button), so that one user's requests are admitted in the
order they reached the bot (`bot.user_turns`). Refusals raise errors whose message is for the user.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

import discord

from bot.engine_state import EngineState, check_can_generate
from bot.job_types import NewRequest, Submitted
from bot.permissions import caller_of, check_may_generate, is_admin, is_owner
from bot.tracker import JobTracker
from engine.spec import JobSpec

if TYPE_CHECKING:
    from bot.config import DiscordSettings, LimitsSettings
    from bot.permissions import Caller
    from bot.service import JobService

log = logging.getLogger(__name__)

# Defer (a public "thinking…") when admission has not answered within this. A burst of 100 commands waits for the
# one-at-a-time admission lock (the last ones answered after ~1.5 s with a grace of 1.5 s), and a store locked by
# another program can take seconds: 0.25 s keeps the first response near 250 ms plus loop lag (bench/load.py,
# docs/reliability.md "Load"); a request that finds others already waiting for admission defers at once. A refusal
# found after the defer is still private (`_withdraw_reply`).
SUBMIT_GRACE_S = 0.25


@dataclass(frozen=True)
class Planned:
    """What a request asks for, once its parent job (if any) was read."""
    spec: JobSpec
    parent_id: int | None = None


Plan = Callable[[], Awaitable[Planned]]


def planned(spec: JobSpec, parent_id: int | None = None) -> Plan:
    """A plan that needs no reading: the spec is known already."""
    async def plan() -> Planned:
        return Planned(spec, parent_id)
    return plan


class JobStarter:
    def __init__(self, settings: "DiscordSettings", limits: "LimitsSettings", jobs: "JobService",
                 tracker: JobTracker, engine_state: Callable[[], EngineState]):
        self.settings = settings
        self.limits = limits
        self.jobs = jobs
        self.tracker = tracker
        self.engine_state = engine_state

    async def start(self, interaction: discord.Interaction, plan: Plan, *, kind: str) -> int:
        """Admit and queue a job for whoever started this interaction, answer at once and follow it; its id."""
        caller = caller_of(interaction)
        # 1. Permissions, on the server side; an engine that failed to start takes no job (it would wait forever).
        check_may_generate(self.settings, caller)
        check_can_generate(self.engine_state())
        # 2. Admission and the job row, in this user's turn. Usually milliseconds: a refusal is then an ephemeral
        #    answer. If it takes longer (a slow store), defer first (a public "thinking…") so that the first
        #    response stays fast and Discord gets it within 3 s. Behind other admissions (a burst: they run one at a
        #    time), defer at once: waiting would only add to the answer time, and an admitted job gets the same
        #    defer anyway.
        with self.jobs.admission() as ahead:
            task = asyncio.ensure_future(self._admit(interaction, caller, plan, kind))
            done, _ = await asyncio.wait({task}, timeout=0 if ahead else SUBMIT_GRACE_S)
            if not done:
                await _defer(interaction, task)
            try:
                submitted = await task
            except Exception:
                # 3. A refusal (or an error) after that defer must stay private: a followup would replace the
                #    public "thinking…" message, so remove it first; the error handler then answers with an
                #    ephemeral followup.
                if interaction.response.is_done():
                    await _withdraw_reply(interaction)
                raise
        # 4. The reply: deferred at once, then the status message that the tracker keeps up to date.
        if not interaction.response.is_done():
            await interaction.response.defer(thinking=True)
        await self.tracker.attach_interaction(submitted.job_id, interaction, position=submitted.position,
                                              eta_s=submitted.eta_s)
        return submitted.job_id

    async def _admit(self, interaction: discord.Interaction, caller: "Caller", plan: Plan, kind: str) -> Submitted:
        """Read what the request needs and submit it, in the caller's turn."""
        async with self.jobs.user_turn(caller.user_id):
            wanted = await plan()
            request = NewRequest(user_id=caller.user_id, spec=wanted.spec, kind=kind, parent_id=wanted.parent_id,
                                 guild_id=caller.guild_id, channel_id=caller.channel_id,
                                 interaction_id=interaction.id, interaction_token=interaction.token,
                                 interaction_created_at=interaction.created_at,
                                 exempt=is_admin(self.settings, caller),
                                 skips_queue_caps=self.limits.owners_skip_queue_caps and is_owner(self.settings,
                                                                                                  caller))
            return await self.jobs.submit(request)


async def _defer(interaction: discord.Interaction, task: asyncio.Future) -> None:
    """The public "thinking…" while admission goes on. If Discord refuses it, the admission still finishes (a job
    it admits is delivered by channel message); the error goes to the handler once the admission is over."""
    try:
        await interaction.response.defer(thinking=True)
    except Exception:
        await asyncio.wait({task})
        raise


async def _withdraw_reply(interaction: discord.Interaction) -> None:
    """Delete the interaction's deferred public reply, so that what follows can be ephemeral."""
    try:
        await interaction.delete_original_response()
    except discord.NotFound:
        pass  # already gone: the next followup is a new message anyway
    except discord.HTTPException as e:
        log.warning("could not remove the 'thinking…' reply of interaction %s (HTTP %s); the refusal that follows "
                    "may be public", interaction.id, e.status)
