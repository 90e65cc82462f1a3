"""/imagine, /show and the buttons under their messages: the image feature in one place.

- `/imagine`: a prompt and its options in, a queued job and a status reply out. The command is built when the
  feature is made, so that the size choices and the prompt length come from the config (`[discord] sizes`,
  `[limits] max_prompt_chars`). Discord's option ranges help the user; the bot checks every value again
  (`bot.validation`) before anything is queued.
- `/show`: a finished job posted again with its buttons, from disk or made again from its record.
- The job buttons (`bot.views.JobButton`; `job_buttons()` is what the client holds for them): 🎲 Reroll, 🔀 Vary,
  ✏️ Edit (a form; its submit comes back through `on_interaction`), 🗑 Delete, and Cancel under a status message.

Every handler checks permissions here, on the server side (Discord's command permissions are a convenience);
refusals raise errors whose message is for the user, answered by the tree's error handler or `bot.replies.guarded`.
A job is started by `JobStarter.start` (bot/job_start.py).
"""
# No `from __future__ import annotations` here: discord.py reads the option types from the live annotations
# of a function built at run time.
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import discord
from discord import app_commands
from discord.ext import commands

from bot.engine_state import EngineState, check_can_generate
from bot.job_lookup import JobLookup, check_own_message
from bot.job_start import JobStarter, Planned, planned
from bot.job_types import CancelOutcome, rerolled, spec_of, varied
from bot.permissions import ShownJob, caller_of, check_may_generate, check_may_manage, check_may_show
from bot.replies import UserFacingError, guarded, send_ephemeral
from bot.validation import InvalidRequest, validate_imagine
from bot.views import EditForm, EditModal, JobButtonHandler, JobRef, edit_form
from db import jobs as store_jobs
from engine.job_status import JobStatus
from engine.limits import MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS, MIN_GUIDANCE, MIN_STEPS
from engine.spec import JobSpec

if TYPE_CHECKING:
    from bot.config import Config
    from bot.results import ResultPoster
    from bot.service import JobService
    from bot.validation import SizeChoice
    from db.session import Store

log = logging.getLogger(__name__)

class ImagineFeature(commands.Cog, name="Imagine"):
    def __init__(self, config: "Config", sizes: "list[SizeChoice]", *, store: "Store", lookup: JobLookup,
                 starter: JobStarter, jobs: "JobService", results: "ResultPoster",
                 engine_state: Callable[[], EngineState], identity: Optional[str]):
        self.config = config
        self.sizes = sizes
        self.store = store
        self.lookup = lookup
        self.starter = starter
        self.jobs = jobs
        self.results = results
        self.engine_state = engine_state
        self.identity = identity
        # Built at run time (its choices come from the config): added to the cog's commands, which discord.py puts
        # in the command tree when the cog is added and takes out when it is removed.
        self.__cog_app_commands__.insert(0, build_imagine_command(config, sizes, self.imagine))

    def job_buttons(self) -> "dict[str, JobButtonHandler]":
        """What each job button does (bot.views.JOB_BUTTONS draws them): the client hands a click to these."""
        return {"reroll": self.reroll, "vary": self.vary, "edit": self.open_edit, "delete": self.delete,
                "cancel": self.cancel}

    # --- commands ----------------------------------------------------------------------------------------------

    async def imagine(self, interaction: discord.Interaction, *, prompt: str, seed: Optional[int],
                      steps: Optional[int], size: Optional[str], guidance: Optional[float],
                      count: Optional[int]) -> None:
        """/imagine: validate every option on the bot side, then start the job."""
        opts = validate_imagine(self.config, self.sizes, prompt=prompt, seed=seed, steps=steps, size=size,
                                guidance=guidance, count=count)
        spec = JobSpec(prompt=opts.prompt, seed=opts.seed, steps=opts.steps, width=opts.width, height=opts.height,
                       guidance=opts.guidance, count=opts.count)
        await self.starter.start(interaction, planned(spec), kind="imagine")

    @app_commands.command(name="show", description="Post a finished job's image again, with its buttons")
    @app_commands.describe(job="The job number (shown under every image and in /history)")
    async def show(self, interaction: discord.Interaction, job: app_commands.Range[int, 1]) -> None:
        """/show: post a job's images again with its buttons, from disk, or regenerated from its record."""
        settings = self.config.discord
        caller = caller_of(interaction)
        record = await self.lookup.job(job)
        # 1. Who may post it here (the same checks whether its PNG is on disk or must be made again): the
        #    requester, an admin of its guild, or anyone in the channel where it was made; and posting must be
        #    allowed here (allowed channels and roles, DMs), as for a new image.
        check_may_show(settings, caller, ShownJob(owner_id=record.user_id, guild_id=record.guild_id,
                                                  channel_id=record.channel_id, deleted=record.deleted), job)
        check_may_generate(settings, caller)
        if record.status is not JobStatus.DONE:
            raise UserFacingError(f"Job #{job} is {record.status}; only finished jobs can be shown.")
        # 2. From disk, if every PNG is still there.
        files = [Path(i.path) for i in record.images]
        if files and all(f.is_file() for f in files):
            await interaction.response.defer(thinking=True)
            payload = await self.results.result_payload(record, upload_limit=interaction.filesize_limit)
            msg = await interaction.followup.send(content=payload.content, embed=payload.embed,
                                                  files=payload.discord_files(), view=payload.view,
                                                  allowed_mentions=discord.AllowedMentions.none(), wait=True)
            await store_jobs.set_message(self.store, record.id, msg.channel.id, msg.id)
            return
        # 3. Pruned: the same spec again (same seed, so the same pixels on the same model).
        await self.starter.start(interaction, planned(spec_of(record), record.id), kind="show")

    # --- the buttons under a result ------------------------------------------------------------------------------

    async def reroll(self, interaction: discord.Interaction, ref: JobRef) -> None:
        """🎲 The same request with a new random seed; the new job is the presser's."""
        self.lookup.check_this_database(ref)

        async def plan() -> Planned:
            parent = await self.lookup.job(ref.job_id)
            return Planned(rerolled(parent), parent.id)
        await self.starter.start(interaction, plan, kind="reroll")

    async def vary(self, interaction: discord.Interaction, ref: JobRef) -> None:
        """🔀 The parent's seed with a fresh variation seed at a subtle strength (`job_types.varied`)."""
        self.lookup.check_this_database(ref)

        async def plan() -> Planned:
            parent = await self.lookup.job(ref.job_id)
            return Planned(varied(parent), parent.id)
        await self.starter.start(interaction, plan, kind="vary")

    async def open_edit(self, interaction: discord.Interaction, ref: JobRef) -> None:
        """✏️ A form prefilled with the job's prompt, seed and steps (`submit_edit` answers it)."""
        self.lookup.check_this_database(ref)
        check_may_generate(self.config.discord, caller_of(interaction))
        check_can_generate(self.engine_state())  # no form to fill in for a job that cannot run
        parent = await self.lookup.job(ref.job_id)
        await interaction.response.send_modal(EditModal(parent, opener_id=interaction.id,
                                                        max_prompt_chars=self.config.limits.max_prompt_chars,
                                                        identity=self.identity))

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """Edit forms are answered here, statelessly: a form opened before a restart still works."""
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        form = edit_form(interaction)
        if form is not None:
            await guarded(interaction, lambda: self.submit_edit(interaction, form))

    async def submit_edit(self, interaction: discord.Interaction, form: EditForm) -> None:
        """The Edit form was sent: the parent's size, guidance and count with the new prompt, seed and steps."""
        self.lookup.check_this_database(form.ref)

        async def plan() -> Planned:
            parent = await self.lookup.job(form.ref.job_id)
            seed = _parse_int(form.seed, "Seed", default=-1)
            steps = _parse_int(form.steps, "Steps", default=parent.steps)
            opts = validate_imagine(self.config, self.sizes, prompt=form.prompt, seed=seed, steps=steps,
                                    guidance=parent.guidance, count=parent.count)
            return Planned(replace(spec_of(parent), prompt=opts.prompt, seed=opts.seed, steps=opts.steps,
                                   variation_seed=None, variation_strength=0.0), parent.id)
        await self.starter.start(interaction, plan, kind="edit")

    async def delete(self, interaction: discord.Interaction, ref: JobRef) -> None:
        """🗑 Delete the result message (requester or admins); the record stays for /history and audit."""
        job = await self.lookup.job_of(ref)
        check_own_message(interaction, job)
        check_may_manage(self.config.discord, caller_of(interaction), job.user_id, "delete",
                         job_guild_id=job.guild_id)
        await store_jobs.mark_deleted(self.store, job.id)
        # The click's own message is the one to remove. Deleting it through the channel may be refused (no
        # permission in that channel); editing it through the interaction always works, so blank it then.
        message = interaction.message
        if message is None:
            raise UserFacingError("This button is not on a message the bot can remove.")
        try:
            await message.delete()
        except discord.NotFound:  # someone removed it already (a moderator): the job is deleted all the same
            log.info("job %d: its message was already gone", job.id)
            await send_ephemeral(interaction, f"Job #{job.id} deleted (its message was already gone).")
        except discord.HTTPException as e:
            log.info("job %d: deleting its message failed (HTTP %s); blanking it instead", job.id, e.status)
            await interaction.response.edit_message(content=f"🗑️ Job #{job.id} was deleted.", embed=None,
                                                    attachments=[], view=None)
        else:
            await send_ephemeral(interaction, f"Job #{job.id} deleted.")
        log.info("job %d deleted by user %d", job.id, interaction.user.id)

    # --- the button under a status message ---------------------------------------------------------------------

    async def cancel(self, interaction: discord.Interaction, ref: JobRef) -> None:
        """Cancel: the requester or an admin; a waiting job leaves the queue, a running one stops at its next step."""
        job = await self.lookup.job_of(ref)
        check_own_message(interaction, job)
        check_may_manage(self.config.discord, caller_of(interaction), job.user_id, "cancel",
                         job_guild_id=job.guild_id)
        outcome = await self.jobs.cancel(job.id)
        text = {
            CancelOutcome.CANCELLED: f"Job #{job.id} cancelled.",
            CancelOutcome.STOPPING: f"Job #{job.id} stops at its next step.",
            CancelOutcome.ALREADY_FINISHED: f"Job #{job.id} has already finished.",
            CancelOutcome.NOT_FOUND: f"Job #{job.id} does not exist (any more).",
        }[outcome]
        await send_ephemeral(interaction, text)


def build_imagine_command(config: "Config", sizes: "list[SizeChoice]", handler) -> app_commands.Command:
    """The /imagine command with this bot's size choices and limits; `handler` is `ImagineFeature.imagine`."""
    max_chars = min(MAX_PROMPT_CHARS, config.limits.max_prompt_chars)
    choices = [app_commands.Choice(name=s.title, value=s.value) for s in sizes]

    @app_commands.command(name="imagine", description="Generate an image from a text prompt")
    @app_commands.describe(
        prompt="What to draw",
        seed="Same seed + same options = same image; -1 or empty = random",
        steps=f"Denoising steps, {MIN_STEPS}-{MAX_STEPS} (default {config.engine.default_steps})",
        size=f"Width × height (default {sizes[0].title})",
        guidance=f"How closely to follow the prompt, {MIN_GUIDANCE:g}-{MAX_GUIDANCE:g} "
                 f"(default {config.engine.default_guidance:g})",
        count=f"Images, 1-{config.limits.max_count}, with seeds seed, seed+1, …",
    )
    @app_commands.choices(size=choices)
    async def imagine(interaction: discord.Interaction,
                      prompt: app_commands.Range[str, 1, max_chars],
                      seed: Optional[app_commands.Range[int, -1, MAX_SEED]] = None,
                      steps: Optional[app_commands.Range[int, MIN_STEPS, MAX_STEPS]] = None,
                      size: Optional[str] = None,
                      guidance: Optional[app_commands.Range[float, MIN_GUIDANCE, MAX_GUIDANCE]] = None,
                      count: Optional[app_commands.Range[int, 1, config.limits.max_count]] = None) -> None:
        await handler(interaction, prompt=prompt, seed=seed, steps=steps, size=size, guidance=guidance, count=count)

    return imagine


def _parse_int(text: str, name: str, *, default: int) -> int:
    text = (text or "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise InvalidRequest(f"{name} must be a whole number, not {text[:20]!r}.") from None
