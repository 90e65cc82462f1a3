"""The ORM schema: the `jobs` table that holds everything needed to reproduce and audit an image.

Plus `instance`: one row with this database's random identity (see `db.instance`).

The schema is owned by the Alembic migrations in `db/migrations/versions/`; a test checks that upgrading an
empty database to head gives exactly these models. Change both together (see docs/database.md).
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (JSON, BigInteger, CheckConstraint, DateTime, Float, ForeignKey, Index, Integer,
                        MetaData, String, Text)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from engine.job_status import JobStatus  # the one status vocabulary (a leaf module: no torch, no discord)

log = logging.getLogger(__name__)

# What made the job: a slash command or one of the buttons under an earlier result.
KINDS = ("imagine", "reroll", "vary", "edit", "show", "upscale")

# Where it was asked for: Discord (slash commands, buttons) or the web console (bot/web/, migration 0003).
DISCORD, WEB = "discord", "web"
SOURCES = (DISCORD, WEB)

# Constraint names that Alembic can find again (SQLite batch migrations need named constraints).
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A timestamp that goes in as any aware datetime and always comes back timezone-aware in UTC.

    SQLite has no time zones: it stores the UTC wall time and SQLAlchemy returns it naive; this type puts
    UTC back. On Postgres the column is `timestamp with time zone`.
    """
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"timestamps must be timezone-aware datetimes (use datetime.now(timezone.utc)), "
                             f"not {value!r}")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Job(Base):
    """One request (a slash command or a button press) and what became of it."""
    __tablename__ = "jobs"

    # 1. identity and lineage
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), default="imagine")
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)

    # 2. who asked, and where (Discord snowflakes need 64 bits)
    user_id: Mapped[int] = mapped_column(BigInteger)  # a web login's jobs: its own negative id (bot/web/jobs.py)
    source: Mapped[str] = mapped_column(String(16), default=DISCORD, server_default=DISCORD)  # one of SOURCES
    user_name: Mapped[str | None] = mapped_column(String(64))  # the web console's login; None for Discord
    guild_id: Mapped[int | None] = mapped_column(BigInteger)  # None in DMs
    channel_id: Mapped[int | None] = mapped_column(BigInteger)
    interaction_id: Mapped[int | None] = mapped_column(BigInteger)
    interaction_token: Mapped[str | None] = mapped_column(String(512))  # valid 15 min; never logged
    interaction_created_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    status_message_id: Mapped[int | None] = mapped_column(BigInteger)  # the "queued #3 / step 5/20" message
    result_channel_id: Mapped[int | None] = mapped_column(BigInteger)
    result_message_id: Mapped[int | None] = mapped_column(BigInteger)  # the message holding the images

    # 3. what was asked (enough to make the same image again)
    prompt: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(BigInteger)  # resolved: never -1
    count: Mapped[int] = mapped_column(Integer, default=1)
    steps: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    guidance: Mapped[float] = mapped_column(Float)
    variation_seed: Mapped[int | None] = mapped_column(BigInteger)
    variation_strength: Mapped[float] = mapped_column(Float, default=0.0)
    model_id: Mapped[str | None] = mapped_column(String(200))  # "name@sha256[:12]"
    # [{"name", "strength", "sha256"}] of each LoRA (engine.spec.LoraUse); None/[] = none
    loras: Mapped[list | None] = mapped_column(JSON)
    input_image: Mapped[str | None] = mapped_column(Text)          # the stored input image (img2img, upscale)
    input_sha256: Mapped[str | None] = mapped_column(String(64))   # its SHA-256: /show and Reroll use the same one
    denoise: Mapped[float | None] = mapped_column(Float)           # the input's strength; None without an input

    # 4. what happened
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)  # engine.job_status
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    timings: Mapped[dict | None] = mapped_column(JSON)  # seconds: encode, denoise, decode, total, …
    precision: Mapped[str | None] = mapped_column(String(200))
    # engine.recipe.EngineRecipe.to_dict(): storage, compute, compile, library versions, device (migration 0005)
    recipe: Mapped[dict | None] = mapped_column(JSON)
    profile: Mapped[str | None] = mapped_column(String(32))
    seeds: Mapped[list | None] = mapped_column(JSON)  # one per image
    images: Mapped[list | None] = mapped_column(JSON)  # [{"path": …, "sha256": …}], one per image
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # message hidden, record kept
    # Discord refused the result's delivery (403/404: channel deleted, bot removed, DMs closed) this many times;
    # at `bot.delivery.MAX_DELIVERY_REFUSALS` the bot stops trying and says why here (the job stays done).
    delivery_refusals: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    undeliverable_reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(s.value) for s in JobStatus)})", name="status"),
        CheckConstraint(f"kind IN ({', '.join(repr(k) for k in KINDS)})", name="kind"),
        Index("ix_jobs_user_history", "user_id", "id"),  # a user's history, newest first
        Index("ix_jobs_status_order", "status", "id"),  # unfinished jobs in order
        {"sqlite_autoincrement": True},  # ids go in button custom_ids: never reuse one
    )


class Instance(Base):
    """This database's identity: random, made when the database is created (migration 0002 gave one to databases
    made before). It goes into new button custom_ids and image file names, so that the job ids of a database that
    was reset (and starts again at 1) are never taken for those of the old one."""
    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1: the table has one row
    identity: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)
