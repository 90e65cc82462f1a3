"""What goes in and out of the jobs service (`bot.service`): a request, its admission, a cancel's outcome, the events
the bot hears about a job, and the spec that reproduces a stored job. Free of discord."""
from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Callable

from bot.input_images import StoredInput
from bot.lora_choice import loras_of
from db.models import DISCORD
from db.records import JobRecord
from engine.image_input import UPSCALE_DENOISE, upscale_size
from engine.job_status import JobStatus
from engine.spec import JobSpec, random_seed


@dataclass(frozen=True)
class NewRequest:
    """A request from a cog: who asks, where, and the spec (its seed may still be None/-1)."""
    user_id: int
    spec: JobSpec
    kind: str = "imagine"
    parent_id: int | None = None
    guild_id: int | None = None
    channel_id: int | None = None
    interaction_id: int | None = None
    interaction_token: str | None = None
    interaction_created_at: datetime | None = None
    status_message_id: int | None = None
    exempt: bool = False  # admins: no per-user limit, no cooldown (the prompt checks and queue caps still hold)
    skips_queue_caps: bool = False  # owners, when [limits] owners_skip_queue_caps: past the guild and global caps
    source: str = DISCORD  # or WEB: the web console (bot/web/), which counts as one server for the guild cap
    user_name: str | None = None  # the web console's login


@dataclass(frozen=True)
class Submitted:
    job_id: int
    position: int
    eta_s: float
    seed: int


class CancelOutcome(enum.Enum):
    CANCELLED = "cancelled"          # it was waiting: it left the queue
    STOPPING = "stopping"            # it is running: it stops at the next step (a `cancelled` event follows)
    ALREADY_FINISHED = "already finished"
    NOT_FOUND = "not found"


@dataclass(frozen=True)
class JobEvent:
    """What the bot hears about a job, named by the status it is in (engine.job_status, the store's and the queue's
    vocabulary): QUEUED: position/eta_s; RUNNING: a worker took it (step None) or step/total of its progress;
    DONE: record (with the saved images); FAILED: message (and record); CANCELLED: record. RUNNING with
    `warming_up`: the engine compiles for the job's shape before its first step (engine/compile.py)."""
    job_id: int
    status: JobStatus
    position: int | None = None
    eta_s: float | None = None
    step: int | None = None
    total: int | None = None
    requeued: bool = False  # QUEUED again: the GPU running it went away (a Ray node or actor died); it runs again
    message: str = ""
    record: JobRecord | None = None
    warming_up: bool = False

    @property
    def progress(self) -> bool:
        """A running job's step report (not the moment it started)."""
        return self.status is JobStatus.RUNNING and self.step is not None


Listener = Callable[[JobEvent], Any]

VARY_STRENGTH = 0.15  # 🔀 Vary (Subtle): the composition stays
VARY_STRONG = 0.5     # 🔀 Vary (Strong): the same subject and palette, a new arrangement


def spec_of(job: JobRecord) -> JobSpec:
    """The spec that reproduces a stored job."""
    return JobSpec(prompt=job.prompt, seed=job.seed, steps=job.steps, width=job.width, height=job.height,
                   guidance=job.guidance, variation_seed=job.variation_seed,
                   variation_strength=job.variation_strength, count=job.count, loras=loras_of(job.loras),
                   image=job.input_image, image_sha256=job.input_sha256,
                   denoise=job.denoise if job.input_image and job.denoise is not None else 1.0,
                   upscale_parent=f"job {job.parent_id}" if job.kind == "upscale" and job.parent_id else None)


def remade(job: JobRecord) -> JobSpec:
    """/show of a job whose images were pruned (and the web console's Reproduce): the spec that reproduces it, made
    with the engine recipe it was made with, as far as the engine can match it (engine/recipe_switch.py). The
    buttons that make new images (Reroll, Vary, Upscale, Edit) run the engine's own recipe."""
    return with_recipe_of(spec_of(job), job)


def with_recipe_of(spec: JobSpec, made: JobRecord) -> JobSpec:
    """`spec` asking for the engine recipe `made` was made with (none recorded: the engine's own): what a /show job
    runs with, when queued (`remade`) and when recovered after a restart (bot/service.py)."""
    return replace(spec, recipe=dict(made.recipe) if made.recipe else None)


def rerolled(parent: JobRecord) -> JobSpec:
    """🎲 Reroll: the same request with a new random seed."""
    return replace(spec_of(parent), seed=random_seed())


def varied(parent: JobRecord, strength: float = VARY_STRENGTH) -> JobSpec:
    """🔀 Vary (Subtle, or Strong with VARY_STRONG): the parent's seed with a fresh variation seed (a variation of its
    first image)."""
    return replace(spec_of(parent), count=1, variation_seed=random_seed(), variation_strength=strength)


def upscaled(parent: JobRecord, image: StoredInput) -> JobSpec:
    """🔍 Upscale ×2: the parent's first image (stored as `image`) twice as large (2048 a side at most), refined at
    UPSCALE_DENOISE with the parent's prompt, seed and LoRAs."""
    width, height = upscale_size(image.width, image.height)
    return replace(spec_of(parent), count=1, width=width, height=height, image=str(image.path),
                   image_sha256=image.sha256, denoise=UPSCALE_DENOISE, upscale_parent=f"job {parent.id}")
