"""The store's boundary types: plain frozen dataclasses, never live ORM objects.

Callers in async code can read every field without a session (no lazy loading, no detached-instance errors).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from db.models import DISCORD, KINDS, SOURCES, Job
from engine.job_status import FINISHED, UNFINISHED, JobStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageFile:
    """One saved PNG of a job."""
    path: str
    sha256: str


@dataclass(frozen=True)
class NewJob:
    """What `create_job` writes. `seed` must already be resolved (never None or -1): the row must reproduce."""
    user_id: int
    prompt: str
    seed: int
    steps: int
    width: int
    height: int
    guidance: float
    count: int = 1
    guild_id: int | None = None
    channel_id: int | None = None
    variation_seed: int | None = None
    variation_strength: float = 0.0
    parent_id: int | None = None
    kind: str = "imagine"
    model_id: str | None = None
    interaction_id: int | None = None
    interaction_token: str | None = field(default=None, repr=False)
    interaction_created_at: datetime | None = None
    status_message_id: int | None = None
    source: str = DISCORD  # or WEB: the web console (bot/web/)
    user_name: str | None = None  # the web console's login
    loras: tuple[dict, ...] = ()  # {"name", "strength", "sha256"} per LoRA
    input_image: str | None = None  # the stored input image (img2img, upscale) and its SHA-256
    input_sha256: str | None = None
    denoise: float | None = None  # the input's strength (None without an input)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"job kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.source not in SOURCES:
            raise ValueError(f"job source {self.source!r} is not one of {', '.join(SOURCES)}")
        if self.seed is None or self.seed < 0:
            raise ValueError(f"seed {self.seed!r} is not resolved: call JobSpec.resolve() before create_job")
        for name in ("count", "steps", "width", "height"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not 0.0 <= self.variation_strength <= 1.0:
            raise ValueError(f"variation_strength must be within 0..1, not {self.variation_strength}")
        if (self.input_image is None) != (self.denoise is None):
            raise ValueError("an input image and its strength (denoise) go together")


@dataclass(frozen=True)
class JobOutput:
    """What `finish_job` records about a successful run."""
    seeds: list[int]
    images: list[ImageFile]
    timings: dict[str, float] = field(default_factory=dict)
    precision: str = ""
    profile: str = ""
    model_id: str = ""  # "" keeps the model_id given at creation
    recipe: dict | None = None  # engine.recipe.EngineRecipe.to_dict(): what besides the job decided its pixels


@dataclass(frozen=True)
class JobRecord:
    """A snapshot of one job row."""
    id: int
    kind: str
    parent_id: int | None
    user_id: int
    guild_id: int | None
    channel_id: int | None
    interaction_id: int | None
    interaction_token: str | None = field(repr=False)
    interaction_created_at: datetime | None
    status_message_id: int | None
    result_channel_id: int | None
    result_message_id: int | None
    prompt: str
    seed: int
    count: int
    steps: int
    width: int
    height: int
    guidance: float
    variation_seed: int | None
    variation_strength: float
    model_id: str | None
    status: JobStatus
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    timings: dict[str, float]
    precision: str | None
    profile: str | None
    seeds: tuple[int, ...]
    images: tuple[ImageFile, ...]
    delivered_at: datetime | None
    deleted_at: datetime | None
    delivery_refusals: int = 0  # 403/404 answers to its delivery
    undeliverable_reason: str | None = None  # set when the bot stopped trying to deliver it
    source: str = DISCORD  # where it was asked for: discord or web
    user_name: str | None = None  # the web console's login (web jobs)
    loras: tuple[dict, ...] = ()  # {"name", "strength", "sha256"} per LoRA
    input_image: str | None = None
    input_sha256: str | None = None
    denoise: float | None = None
    recipe: dict | None = None  # the engine recipe it was made with (None: made before recipes were recorded)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def unfinished(self) -> bool:
        return self.status in UNFINISHED

    @property
    def delivered(self) -> bool:
        return self.delivered_at is not None

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    @classmethod
    def from_row(cls, row: Job) -> "JobRecord":
        images = tuple(ImageFile(path=i["path"], sha256=i["sha256"]) for i in (row.images or []))
        return cls(
            id=row.id, kind=row.kind, parent_id=row.parent_id, user_id=row.user_id, guild_id=row.guild_id,
            channel_id=row.channel_id, interaction_id=row.interaction_id, interaction_token=row.interaction_token,
            interaction_created_at=row.interaction_created_at, status_message_id=row.status_message_id,
            result_channel_id=row.result_channel_id, result_message_id=row.result_message_id, prompt=row.prompt,
            seed=row.seed, count=row.count, steps=row.steps, width=row.width, height=row.height,
            guidance=row.guidance, variation_seed=row.variation_seed, variation_strength=row.variation_strength,
            model_id=row.model_id, status=JobStatus(row.status), error=row.error, created_at=row.created_at,
            started_at=row.started_at, finished_at=row.finished_at, timings=dict(row.timings or {}),
            precision=row.precision, profile=row.profile, seeds=tuple(row.seeds or ()), images=images,
            delivered_at=row.delivered_at, deleted_at=row.deleted_at,
            delivery_refusals=row.delivery_refusals or 0, undeliverable_reason=row.undeliverable_reason,
            source=row.source or DISCORD, user_name=row.user_name,
            loras=tuple(dict(u) for u in (row.loras or [])), input_image=row.input_image,
            input_sha256=row.input_sha256, denoise=row.denoise, recipe=dict(row.recipe) if row.recipe else None,
        )


@dataclass(frozen=True)
class Page:
    """One page of a user's history, newest first. `page` counts from 1."""
    items: list[JobRecord]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    @property
    def has_next(self) -> bool:
        return self.page < self.pages

    @property
    def has_prev(self) -> bool:
        return self.page > 1
