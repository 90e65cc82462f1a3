"""/imagine, /show and the buttons under their messages: the image feature in one place.

- `/imagine`: a prompt and its options in, a queued job and a status reply out. The command is built when the
  feature is made, so that the size choices and the prompt length come from the config (`[discord] sizes`,
  `[limits] max_prompt_chars`). Discord's option ranges help the user; the bot checks every value again
  (`bot.validation`) before anything is queued. LoRAs (`lora`, `lora_strength`, `<lora:name:0.8>` in the prompt:
  `bot.lora_choice`) and an image input (`image`, `strength`: `bot.input_images`) are read inside the user's turn.
- `/loras`: the installed LoRAs with their trigger words.
- `/show`: a finished job posted again with its buttons, from disk or made again from its record.
- The job buttons (`bot.views.JobButton`; `job_buttons()` is what the client holds for them): 🎲 Reroll, 🔀 Vary
  (Subtle) and (Strong), 🔍 Upscale ×2, ✏️ Edit (a form; its submit comes back through `on_interaction`), 🗑 Delete,
  and Cancel under a status message.

Every handler checks permissions here, on the server side (Discord's command permissions are a convenience);
refusals raise errors whose message is for the user, answered by the tree's error handler or `bot.replies.guarded`.
A job is started by `JobStarter.start` (bot/job_start.py).
"""
# No `from __future__ import annotations` here: discord.py reads the option types from the live annotations
# of a function built at run time.
import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import discord
from discord import app_commands
from discord.ext import commands

from bot.engine_state import EngineState, check_can_generate
from bot.input_images import check_attachment, take_attachment, take_file
from bot.job_lookup import JobLookup, check_own_message
from bot.job_start import JobStarter, Planned, planned
from bot.literal import literal
from bot.job_types import VARY_STRONG, CancelOutcome, remade, rerolled, spec_of, upscaled, varied
from bot.lora_choice import ChosenLoras, autocomplete_choices, check_still_there, choose_loras, lora_library
from bot.permissions import ShownJob, caller_of, check_may_generate, check_may_manage, check_may_show
from bot.replies import UserFacingError, guarded, send_ephemeral
from bot.results import offers_upscale
from bot.validation import InvalidRequest, validate_imagine
from bot.views import EditForm, EditModal, JobButtonHandler, JobRef, edit_form
from db import jobs as store_jobs
from engine import limits
from engine.image_input import DEFAULT_DENOISE, fit_size, read_checked
from engine.job_status import JobStatus
from engine.limits import (MAX_GUIDANCE, MAX_LORA_STRENGTH, MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS, MIN_GUIDANCE,
                           MIN_LORA_STRENGTH, MIN_STEPS)
from engine.spec import JobSpec

if TYPE_CHECKING:
    from bot.config import Config
    from bot.results import ResultPoster
    from bot.service import JobService
    from bot.validation import SizeChoice
    from db.session import Store

log = logging.getLogger(__name__)

LORAS_LIST_CHARS = 1900  # /loras answers in one message (Discord: 2000 characters)

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
        self.loras = lora_library(config.engine)
        # Built at run time (its choices come from the config): added to the cog's commands, which discord.py puts
        # in the command tree when the cog is added and takes out when it is removed.
        self.__cog_app_commands__.insert(0, build_imagine_command(config, sizes, self.imagine,
                                                                  lambda typed: autocomplete_choices(self.loras, typed)))

    def job_buttons(self) -> "dict[str, JobButtonHandler]":
        """What each job button does (bot.views.JOB_BUTTONS draws them): the client hands a click to these."""
        return {"reroll": self.reroll, "vary": self.vary, "varystrong": self.vary_strong, "upscale": self.upscale,
                "edit": self.open_edit, "delete": self.delete, "cancel": self.cancel}

    # --- commands ----------------------------------------------------------------------------------------------

    async def imagine(self, interaction: discord.Interaction, *, prompt: str, seed: Optional[int],
                      steps: Optional[int], size: Optional[str], guidance: Optional[float],
                      count: Optional[int], lora: Optional[str] = None, lora_strength: Optional[float] = None,
                      image: Optional[discord.Attachment] = None, strength: Optional[float] = None) -> None:
        """/imagine: validate every option on the bot side, then start the job. What takes time (a LoRA file's
        hash, the attachment's download) runs in the plan, inside the user's turn, after a defer if it is slow."""
        # 1. What can be told at once: the options, an image strength without an image, the attachment's declared
        #    size and type (before it is downloaded).
        opts = validate_imagine(self.config, self.sizes, prompt=prompt, seed=seed, steps=steps, size=size,
                                guidance=guidance, count=count)
        if strength is not None and image is None:
            raise InvalidRequest("strength needs an image: attach one in the image option.")
        denoise = _user_facing(limits.check_denoise, DEFAULT_DENOISE if strength is None else strength)
        if image is not None:
            _user_facing(check_attachment, image.filename, image.size, image.content_type,
                         self.config.limits.max_input_mb)

        # 2. The LoRAs and the stored input, then the spec.
        async def plan() -> Planned:
            chosen = await self._choose_loras(opts.prompt, lora, lora_strength)
            spec = JobSpec(prompt=chosen.prompt, seed=opts.seed, steps=opts.steps, width=opts.width,
                           height=opts.height, guidance=opts.guidance, count=opts.count, loras=chosen.loras)
            if image is None:
                return Planned(spec)
            stored = await _awaited(take_attachment(image, max_mb=self.config.limits.max_input_mb,
                                                    images_dir=self.config.engine.images_dir))
            width, height = (opts.width, opts.height) if size else fit_size(stored.width, stored.height)
            return Planned(replace(spec, width=width, height=height, image=str(stored.path),
                                   image_sha256=stored.sha256, denoise=denoise))
        await self.starter.start(interaction, plan, kind="imagine")

    @app_commands.command(name="loras", description="List the LoRAs this bot has, with their trigger words")
    async def list_loras(self, interaction: discord.Interaction) -> None:
        """/loras: every installed LoRA, its size and the trigger words its file names (an ephemeral answer)."""
        files = self.loras.files()
        if not files:
            await send_ephemeral(interaction, "No LoRAs are installed. The bot's owner puts LoRA files "
                                              "(.safetensors) in [engine] loras_dir.")
            return
        infos = await asyncio.to_thread(lambda: [self.loras.info(f) for f in files])
        lines = []
        for info in infos:
            words = f" — trigger words: {literal(', '.join(info.triggers), 300)}" if info.triggers else ""
            lines.append(f"• **{literal(info.name, 100)}** ({_file_size(info.size)}){words}")
        text = f"{len(files)} LoRA{'s' if len(files) != 1 else ''} (use the lora option, or <lora:name:0.8> in a " \
               f"prompt):\n"
        shown = []
        for line in lines:
            if len(text) + sum(len(s) + 1 for s in shown) + len(line) > LORAS_LIST_CHARS:
                shown.append(f"… and {len(lines) - len(shown)} more")
                break
            shown.append(line)
        await send_ephemeral(interaction, text + "\n".join(shown))

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
        # 3. Pruned: the same spec again (same seed, so the same pixels on the same model), with the engine recipe
        #    it was made with where the engine can switch to it, unless a LoRA or the input image it was made with is
        #    gone or changed: then it says so instead of making another image.
        spec = remade(record)
        await self._check_inputs(spec)
        shown = await self.starter.start(interaction, planned(spec, record.id), kind="show")
        differences = self.starter.jobs.recipe_differences(record.recipe)
        if differences:   # what of its recipe the engine cannot match (engine/recipe.py): the status says so, and why
            self.starter.tracker.remark(shown, f"Made again from job #{job}'s record: its pixels may differ slightly "
                                               f"from the original, because the engine changed since: "
                                               f"{'; '.join(differences)}.")

    # --- the buttons under a result ------------------------------------------------------------------------------

    async def reroll(self, interaction: discord.Interaction, ref: JobRef) -> None:
        """🎲 The same request with a new random seed; the new job is the presser's."""
        self.lookup.check_this_database(ref)

        async def plan() -> Planned:
            parent = await self.lookup.job(ref.job_id)
            spec = rerolled(parent)
            await self._check_inputs(spec)
            return Planned(spec, parent.id)
        await self.starter.start(interaction, plan, kind="reroll")

    async def vary(self, interaction: discord.Interaction, ref: JobRef, strength: float | None = None) -> None:
        """🔀 Vary (Subtle): the parent's seed with a fresh variation seed at a subtle strength (`job_types.varied`);
        buttons posted before Vary (Strong) existed are this one."""
        self.lookup.check_this_database(ref)

        async def plan() -> Planned:
            parent = await self.lookup.job(ref.job_id)
            spec = varied(parent) if strength is None else varied(parent, strength)
            await self._check_inputs(spec)
            return Planned(spec, parent.id)
        await self.starter.start(interaction, plan, kind="vary")

    async def vary_strong(self, interaction: discord.Interaction, ref: JobRef) -> None:
        """🔀 Vary (Strong): as Vary (Subtle), at `job_types.VARY_STRONG`."""
        await self.vary(interaction, ref, VARY_STRONG)

    async def upscale(self, interaction: discord.Interaction, ref: JobRef) -> None:
        """🔍 Upscale ×2: the job's first image twice as large, refined by img2img with its prompt, seed and LoRAs,
        as a new job (`job_types.upscaled`); its input is that image's pixels, stored as an input."""
        self.lookup.check_this_database(ref)

        async def plan() -> Planned:
            parent = await self.lookup.job(ref.job_id)
            if parent.status is not JobStatus.DONE or not parent.images:
                raise UserFacingError(f"Job #{parent.id} has no finished image to upscale.")
            if not offers_upscale(parent):
                raise UserFacingError(f"Job #{parent.id} is {parent.width}×{parent.height}: Upscale ×2 takes images "
                                      f"of at most 1024×1024 (the result is at most 2048 a side).")
            stored = await _awaited(take_file(Path(parent.images[0].path), images_dir=self.config.engine.images_dir))
            spec = upscaled(parent, stored)
            await self._check_inputs(spec)
            return Planned(spec, parent.id)
        await self.starter.start(interaction, plan, kind="upscale")

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
            # <lora:…> tags in the edited prompt choose the LoRAs; without tags the parent's stay
            chosen = await self._choose_loras(opts.prompt, None, None)
            base = spec_of(parent)
            spec = replace(base, prompt=chosen.prompt, seed=opts.seed, steps=opts.steps, variation_seed=None,
                           variation_strength=0.0, loras=chosen.loras or base.loras)
            await self._check_inputs(spec)
            return Planned(spec, parent.id)
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

    # --- LoRAs and inputs ------------------------------------------------------------------------------------------

    async def _choose_loras(self, prompt: str, lora: Optional[str], lora_strength: Optional[float]) -> ChosenLoras:
        return await _awaited(choose_loras(self.loras, prompt=prompt, lora=lora, lora_strength=lora_strength,
                                           max_loras=self.config.limits.max_loras))

    async def _check_inputs(self, spec: JobSpec) -> None:
        """InvalidRequest when a LoRA or the input image of a job made again is gone or is not the same file."""
        await _awaited(check_still_there(self.loras, spec.loras))
        if spec.image is not None:
            await _awaited(asyncio.to_thread(read_checked, spec.image, spec.image_sha256))

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


def build_imagine_command(config: "Config", sizes: "list[SizeChoice]", handler,
                          lora_names: Callable[[str], list[tuple[str, str]]] = lambda typed: []
                          ) -> app_commands.Command:
    """The /imagine command with this bot's size choices and limits; `handler` is `ImagineFeature.imagine`,
    `lora_names(typed)` the (label, name) pairs the `lora` option's autocomplete offers."""
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
        lora="A LoRA (style or subject add-on) by name; <lora:name:0.8> in the prompt works too",
        lora_strength=f"The lora's strength, {MIN_LORA_STRENGTH:g} to {MAX_LORA_STRENGTH:g} (default 1)",
        image=f"An image to start from (PNG, JPEG, WebP; at most {config.limits.max_input_mb:g} MB)",
        strength=f"How much to change the image: 0 keeps it, 1 ignores it (default {DEFAULT_DENOISE:g})",
    )
    @app_commands.choices(size=choices)
    async def imagine(interaction: discord.Interaction,
                      prompt: app_commands.Range[str, 1, max_chars],
                      seed: Optional[app_commands.Range[int, -1, MAX_SEED]] = None,
                      steps: Optional[app_commands.Range[int, MIN_STEPS, MAX_STEPS]] = None,
                      size: Optional[str] = None,
                      guidance: Optional[app_commands.Range[float, MIN_GUIDANCE, MAX_GUIDANCE]] = None,
                      count: Optional[app_commands.Range[int, 1, config.limits.max_count]] = None,
                      lora: Optional[app_commands.Range[str, 1, 100]] = None,
                      lora_strength: Optional[app_commands.Range[float, MIN_LORA_STRENGTH, MAX_LORA_STRENGTH]] = None,
                      image: Optional[discord.Attachment] = None,
                      strength: Optional[app_commands.Range[float, 0.0, 1.0]] = None) -> None:
        await handler(interaction, prompt=prompt, seed=seed, steps=steps, size=size, guidance=guidance, count=count,
                      lora=lora, lora_strength=lora_strength, image=image, strength=strength)

    @imagine.autocomplete("lora")
    async def lora_autocomplete(interaction: discord.Interaction, typed: str) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=label, value=name) for label, name in lora_names(typed)]

    return imagine


def _user_facing(check, *args):
    """`check(*args)`; its LimitError (a LoRA, an image, a strength) as an InvalidRequest, answered privately."""
    try:
        return check(*args)
    except limits.LimitError as e:
        raise InvalidRequest(str(e)) from None


async def _awaited(awaitable):
    """`await awaitable`; its LimitError as an InvalidRequest (see `_user_facing`)."""
    try:
        return await awaitable
    except limits.LimitError as e:
        raise InvalidRequest(str(e)) from None


def _file_size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.0f} MB" if nbytes >= 2**20 else f"{max(nbytes // 1024, 1)} KB"


def _parse_int(text: str, name: str, *, default: int) -> int:
    text = (text or "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise InvalidRequest(f"{name} must be a whole number, not {text[:20]!r}.") from None
