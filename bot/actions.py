"""What a slash command, button or modal does, once parsed: start a job, cancel, delete, show, edit.

Every entry point checks permissions here, on the server side (Discord's command permissions are a
convenience). Refusals raise errors whose message is for the user; `bot.replies.guarded` / the tree's error
handler turn them into ephemeral messages.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable

import discord

from bot.engine_state import check_can_generate
from bot.permissions import (ShownJob, caller_of, check_may_generate, check_may_manage, check_may_show, is_admin,
                             is_owner)
from bot.replies import UserFacingError, send_ephemeral
from bot.job_types import CancelOutcome, NewRequest, Submitted, spec_of
from bot.validation import InvalidRequest, validate_imagine
from bot.views import EditModal, JobRef
from db import jobs as store_jobs
from engine.job_status import JobStatus
from engine.spec import JobSpec, random_seed

if TYPE_CHECKING:
    from bot.client import FluxBot
    from bot.permissions import Caller
    from db.records import JobRecord

log = logging.getLogger(__name__)

VARY_STRENGTH = 0.15  # 🔀 Vary: subtle, the composition stays
# Defer (a public "thinking…") when admission has not answered within this. A burst of 100 commands waits for the
# one-at-a-time admission lock (the last ones answered after ~1.5 s with a grace of 1.5 s), and a store locked by
# another program can take seconds: 0.25 s keeps the first response near 250 ms plus loop lag (bench/load.py,
# docs/reliability.md "Load"); a request that finds others already waiting for admission defers at once. A refusal
# found after the defer is still private (`_withdraw_reply`).
SUBMIT_GRACE_S = 0.25


def bot_of(interaction: discord.Interaction) -> "FluxBot":
    return interaction.client  # type: ignore[return-value]


async def load_job(interaction: discord.Interaction, job_id: int) -> "JobRecord":
    job = await store_jobs.get_job(bot_of(interaction).store, job_id)
    if job is None:
        raise UserFacingError(f"Job #{job_id} does not exist (any more).")
    return job


# --- starting jobs ---------------------------------------------------------------------------------------------

async def imagine(interaction: discord.Interaction, *, prompt: str, seed: int | None, steps: int | None,
                  size: str | None, guidance: float | None, count: int | None) -> None:
    """/imagine: validate every option on the bot side, then start the job."""
    bot = bot_of(interaction)
    opts = validate_imagine(bot.config, bot.sizes, prompt=prompt, seed=seed, steps=steps, size=size,
                            guidance=guidance, count=count)
    spec = JobSpec(prompt=opts.prompt, seed=opts.seed, steps=opts.steps, width=opts.width, height=opts.height,
                   guidance=opts.guidance, count=opts.count)
    await start_job(interaction, planned(spec), kind="imagine")


async def reroll(interaction: discord.Interaction, job_id: int) -> None:
    """🎲 The same request with a new random seed; the new job is the presser's."""
    async def plan() -> Planned:
        parent = await load_job(interaction, job_id)
        return Planned(replace(spec_of(parent), seed=random_seed()), parent.id)
    await start_job(interaction, plan, kind="reroll")


async def vary(interaction: discord.Interaction, job_id: int) -> None:
    """🔀 The parent's seed with a fresh variation seed at a subtle strength (variation of the first image)."""
    async def plan() -> Planned:
        parent = await load_job(interaction, job_id)
        return Planned(replace(spec_of(parent), count=1, variation_seed=random_seed(),
                               variation_strength=VARY_STRENGTH), parent.id)
    await start_job(interaction, plan, kind="vary")


async def open_edit(interaction: discord.Interaction, job_id: int) -> None:
    """✏️ A modal prefilled with the job's prompt, seed and steps."""
    bot = bot_of(interaction)
    check_may_generate(bot.config.discord, caller_of(interaction))
    check_can_generate(bot.engine_state)  # no form to fill in for a job that cannot run
    parent = await load_job(interaction, job_id)
    await interaction.response.send_modal(EditModal(parent, opener_id=interaction.id,
                                                    max_prompt_chars=bot.config.limits.max_prompt_chars,
                                                    identity=bot.identity))


async def submit_edit(interaction: discord.Interaction, ref: JobRef, prompt: str, seed_text: str,
                      steps_text: str) -> None:
    """The Edit modal was sent: the parent's size, guidance and count with the new prompt, seed and steps."""
    bot = bot_of(interaction)
    check_this_database(bot, ref)
    job_id = ref.job_id

    async def plan() -> Planned:
        parent = await load_job(interaction, job_id)
        seed = _parse_int(seed_text, "Seed", default=-1)
        steps = _parse_int(steps_text, "Steps", default=parent.steps)
        opts = validate_imagine(bot.config, bot.sizes, prompt=prompt, seed=seed, steps=steps,
                                guidance=parent.guidance, count=parent.count)
        return Planned(replace(spec_of(parent), prompt=opts.prompt, seed=opts.seed, steps=opts.steps,
                               variation_seed=None, variation_strength=0.0), parent.id)
    await start_job(interaction, plan, kind="edit")


def _parse_int(text: str, name: str, *, default: int) -> int:
    text = (text or "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise InvalidRequest(f"{name} must be a whole number, not {text[:20]!r}.") from None


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


async def start_job(interaction: discord.Interaction, plan: Plan, *, kind: str) -> None:
    """Admit and queue a job for whoever started this interaction, answer at once and follow it.

    `plan` reads what the request needs (its parent job) inside the user's turn, so that a user's requests are
    admitted in the order they reached the bot (see `UserTurns`)."""
    bot = bot_of(interaction)
    caller = caller_of(interaction)
    # 1. Permissions, on the server side; an engine that failed to start takes no job (it would wait forever).
    check_may_generate(bot.config.discord, caller)
    check_can_generate(bot.engine_state)
    # 2. Admission and the job row, in this user's turn. Usually milliseconds: a refusal is then an ephemeral
    #    answer. If it takes longer (a slow store), defer first (a public "thinking…") so that the first response
    #    stays fast and Discord gets it within 3 s. Behind other admissions (a burst: they run one at a time),
    #    defer at once: waiting would only add to the answer time, and an admitted job gets the same defer anyway.
    with bot.service.admission() as ahead:
        task = asyncio.ensure_future(_admit(interaction, caller, plan, kind))
        done, _ = await asyncio.wait({task}, timeout=0 if ahead else SUBMIT_GRACE_S)
        if not done:
            await _defer(interaction, task)
        try:
            submitted = await task
        except Exception:
            # 3. A refusal (or an error) after that defer must stay private: a followup would replace the public
            #    "thinking…" message, so remove it first; the error handler then answers with an ephemeral
            #    followup.
            if interaction.response.is_done():
                await _withdraw_reply(interaction)
            raise
    # 4. The reply: deferred at once, then the status message that the tracker keeps up to date.
    if not interaction.response.is_done():
        await interaction.response.defer(thinking=True)
    await bot.tracker.attach_interaction(submitted.job_id, interaction, position=submitted.position,
                                         eta_s=submitted.eta_s)


async def _admit(interaction: discord.Interaction, caller: "Caller", plan: Plan, kind: str) -> Submitted:
    """Read what the request needs and submit it, in the caller's turn."""
    bot = bot_of(interaction)
    async with bot.service.user_turn(caller.user_id):
        wanted = await plan()
        request = NewRequest(user_id=caller.user_id, spec=wanted.spec, kind=kind, parent_id=wanted.parent_id,
                             guild_id=caller.guild_id, channel_id=caller.channel_id, interaction_id=interaction.id,
                             interaction_token=interaction.token, interaction_created_at=interaction.created_at,
                             exempt=is_admin(bot.config.discord, caller),
                             skips_queue_caps=bot.config.limits.owners_skip_queue_caps
                             and is_owner(bot.config.discord, caller))
        return await bot.service.submit(request)


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


# --- which job a button means ------------------------------------------------------------------------------------

FOREIGN_BUTTON = ("This button comes from an earlier database of this bot (it was reset or replaced since), so it "
                  "no longer stands for any job here and nothing was done. /history lists your images.")


def check_this_database(bot: "FluxBot", ref: JobRef) -> None:
    """A button or form made by another database (its identity differs) means no job of this one."""
    if ref.identity is not None and ref.identity != bot.identity:
        log.info("button of database %s pressed; this database is %s", ref.identity, bot.identity)
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


async def job_button(interaction: discord.Interaction, action: str, ref: JobRef) -> None:
    """A job button was pressed: the action, once the button is known to mean a job of this database."""
    check_this_database(bot_of(interaction), ref)
    await JOB_ACTIONS[action](interaction, ref.job_id)


# --- managing jobs -----------------------------------------------------------------------------------------------

async def cancel(interaction: discord.Interaction, job_id: int) -> None:
    """Cancel: the requester or an admin; a waiting job leaves the queue, a running one stops at its next step."""
    bot = bot_of(interaction)
    caller = caller_of(interaction)
    job = await load_job(interaction, job_id)
    check_own_message(interaction, job)
    check_may_manage(bot.config.discord, caller, job.user_id, "cancel", job_guild_id=job.guild_id)
    outcome = await bot.service.cancel(job_id)
    text = {
        CancelOutcome.CANCELLED: f"Job #{job_id} cancelled.",
        CancelOutcome.STOPPING: f"Job #{job_id} stops at its next step.",
        CancelOutcome.ALREADY_FINISHED: f"Job #{job_id} has already finished.",
        CancelOutcome.NOT_FOUND: f"Job #{job_id} does not exist (any more).",
    }[outcome]
    await send_ephemeral(interaction, text)


async def delete(interaction: discord.Interaction, job_id: int) -> None:
    """🗑 Delete the result message (requester or admins); the record stays for /history and audit."""
    bot = bot_of(interaction)
    job = await load_job(interaction, job_id)
    check_own_message(interaction, job)
    check_may_manage(bot.config.discord, caller_of(interaction), job.user_id, "delete", job_guild_id=job.guild_id)
    await store_jobs.mark_deleted(bot.store, job_id)
    # The click's own message is the one to remove. Deleting it through the channel may be refused (no
    # permission in that channel); editing it through the interaction always works, so blank it then.
    message = interaction.message
    if message is None:
        raise UserFacingError("This button is not on a message the bot can remove.")
    try:
        await message.delete()
    except discord.NotFound:  # someone removed it already (a moderator): the job is deleted all the same
        log.info("job %d: its message was already gone", job_id)
        await send_ephemeral(interaction, f"Job #{job_id} deleted (its message was already gone).")
    except discord.HTTPException as e:
        log.info("job %d: deleting its message failed (HTTP %s); blanking it instead", job_id, e.status)
        await interaction.response.edit_message(content=f"🗑️ Job #{job_id} was deleted.", embed=None,
                                                attachments=[], view=None)
    else:
        await send_ephemeral(interaction, f"Job #{job_id} deleted.")
    log.info("job %d deleted by user %d", job_id, interaction.user.id)


async def show(interaction: discord.Interaction, job_id: int) -> None:
    """/show: post a job's images again with its buttons, from disk, or regenerated from its record."""
    bot = bot_of(interaction)
    caller = caller_of(interaction)
    job = await load_job(interaction, job_id)
    # 1. Who may post it here (the same checks whether its PNG is on disk or must be made again): the requester,
    #    an admin of its guild, or anyone in the channel where it was made; and posting must be allowed here
    #    (allowed channels and roles, DMs), as for a new image.
    check_may_show(bot.config.discord, caller, ShownJob(owner_id=job.user_id, guild_id=job.guild_id,
                                                        channel_id=job.channel_id, deleted=job.deleted), job_id)
    check_may_generate(bot.config.discord, caller)
    if job.status is not JobStatus.DONE:
        raise UserFacingError(f"Job #{job_id} is {job.status}; only finished jobs can be shown.")
    # 2. From disk, if every PNG is still there.
    files = [Path(i.path) for i in job.images]
    if files and all(f.is_file() for f in files):
        await interaction.response.defer(thinking=True)
        payload = await bot.tracker.result_payload(job, upload_limit=interaction.filesize_limit)
        msg = await interaction.followup.send(content=payload.content, embed=payload.embed,
                                              files=payload.discord_files(), view=payload.view,
                                              allowed_mentions=discord.AllowedMentions.none(), wait=True)
        await store_jobs.set_message(bot.store, job.id, msg.channel.id, msg.id)
        return
    # 3. Pruned: the same spec again (same seed, so the same pixels on the same model).
    await start_job(interaction, planned(spec_of(job), job.id), kind="show")


# What each job button does (bot.views.JOB_BUTTONS draws them); looked up when pressed.
JOB_ACTIONS: dict[str, Callable[[discord.Interaction, int], Awaitable[None]]] = {
    "reroll": lambda i, job_id: reroll(i, job_id), "vary": lambda i, job_id: vary(i, job_id),
    "edit": lambda i, job_id: open_edit(i, job_id), "delete": lambda i, job_id: delete(i, job_id),
    "cancel": lambda i, job_id: cancel(i, job_id),
}
