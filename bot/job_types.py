"""What goes in and out of the jobs service (`bot.service`): a request, its admission, a cancel's outcome, the events
the bot hears about a job, and the spec that reproduces a stored job. Free of discord."""
from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Callable

from db.records import JobRecord
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
    DONE: record (with the saved images); FAILED: message (and record); CANCELLED: record."""
    job_id: int
    status: JobStatus
    position: int | None = None
    eta_s: float | None = None
    step: int | None = None
    total: int | None = None
    message: str = ""
    record: JobRecord | None = None

    @property
    def progress(self) -> bool:
        """A running job's step report (not the moment it started)."""
        return self.status is JobStatus.RUNNING and self.step is not None


Listener = Callable[[JobEvent], Any]

VARY_STRENGTH = 0.15  # 🔀 Vary: subtle, the composition stays


def spec_of(job: JobRecord) -> JobSpec:
    """The spec that reproduces a stored job."""
    return JobSpec(prompt=job.prompt, seed=job.seed, steps=job.steps, width=job.width, height=job.height,
                   guidance=job.guidance, variation_seed=job.variation_seed,
                   variation_strength=job.variation_strength, count=job.count)


def rerolled(parent: JobRecord) -> JobSpec:
    """🎲 Reroll: the same request with a new random seed."""
    return replace(spec_of(parent), seed=random_seed())


def varied(parent: JobRecord) -> JobSpec:
    """🔀 Vary: the parent's seed with a fresh variation seed at a subtle strength (a variation of its first
    image)."""
    return replace(spec_of(parent), count=1, variation_seed=random_seed(), variation_strength=VARY_STRENGTH)
