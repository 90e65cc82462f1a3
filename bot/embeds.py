"""How jobs look in Discord: the status line while a job waits or runs, the result embed, history and queue.

Pure functions of job records and numbers; nothing here talks to Discord or the store. Prompts are user text:
they always go through `bot.literal.literal` (markdown and mentions shown as typed, cut to a budget).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import discord

from bot.engine_state import EngineState, EngineStatus
from bot.literal import literal
from db.records import JobRecord
from engine.job_status import JobStatus

log = logging.getLogger(__name__)

COLOR_OK = discord.Colour.from_rgb(88, 101, 242)
COLOR_BAD = discord.Colour.from_rgb(237, 66, 69)
EMBED_DESCRIPTION_MAX = 4096
EMBED_FIELD_MAX = 1024  # characters of an embed field value
STATUS_PROMPT_CHARS = 160  # the prompt in a status line, as sent (escapes count)
HISTORY_PROMPT_CHARS = 120  # the prompt of one /history line, as sent (10 lines fit the 4096 of an embed)
STATUS_ICONS = {JobStatus.QUEUED: "⏳", JobStatus.RUNNING: "🎨", JobStatus.DONE: "✅", JobStatus.FAILED: "⚠️",
                JobStatus.CANCELLED: "🚫"}


@dataclass(frozen=True)
class StatusLine:
    """What the status message shows; the newest one replaces the older ones."""
    state: JobStatus
    position: int | None = None
    eta_s: float | None = None
    step: int = 0
    total: int = 0
    elapsed_s: float | None = None
    error: str = ""
    note: str = ""  # QUEUED: why the job cannot move yet (the model is loading…); shown instead of the ETA
    warming_up: bool = False  # RUNNING: the engine compiles for this size first (no step yet, no ETA)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m} min {sec:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def status_text(job_id: int, prompt: str, st: StatusLine) -> str:
    """One short message: the prompt excerpt and where the job stands."""
    icon = STATUS_ICONS.get(st.state, "")
    head = f"**{literal(prompt, STATUS_PROMPT_CHARS)}** · job {job_id}\n"
    if st.state is JobStatus.QUEUED:
        where = f"position {st.position}" if st.position else "waiting"
        if st.note:
            return f"{head}{icon} Queued, {where} · {st.note}"
        eta = f" · ready in about {fmt_seconds(st.eta_s)}" if st.eta_s is not None else ""
        return f"{head}{icon} Queued, {where}{eta}"
    if st.state is JobStatus.RUNNING:
        steps = f"step {st.step}/{st.total}" if st.total else "starting"
        if st.warming_up and not st.total:
            steps = "warming up (compiling the model for this size, once)"
        elapsed = f" · {fmt_seconds(st.elapsed_s)}" if st.elapsed_s is not None else ""
        return f"{head}{icon} Generating, {steps}{elapsed}"
    if st.state is JobStatus.DONE:
        took = f" in {fmt_seconds(st.elapsed_s)}" if st.elapsed_s is not None else ""
        return f"{head}{icon} Done{took}."
    if st.state is JobStatus.CANCELLED:
        return f"{head}{icon} Cancelled."
    return f"{head}{icon} Failed: {st.error or 'unknown error'}"


def image_name(job_id: int, index: int) -> str:
    return f"fluxbot_{job_id}_{index}.png"


def result_embed(job: JobRecord, *, requester: str | None = None) -> discord.Embed:
    """The embed under a result: prompt, seeds, steps, size, guidance, model, time and job id."""
    emb = discord.Embed(description=literal(job.prompt, EMBED_DESCRIPTION_MAX, one_line=False), colour=COLOR_OK)
    seeds = job.seeds or [job.seed]
    emb.add_field(name="Seed" if len(seeds) == 1 else "Seeds", value=", ".join(str(s) for s in seeds))
    emb.add_field(name="Steps", value=str(job.steps))
    emb.add_field(name="Size", value=f"{job.width}×{job.height}")
    emb.add_field(name="Guidance", value=f"{job.guidance:g}")
    if job.variation_seed is not None and job.variation_strength:
        emb.add_field(name="Variation", value=f"seed {job.variation_seed} at {job.variation_strength:g}")
    if job.loras:
        names = ", ".join(f"{u['name']} {u['strength']:g}" for u in job.loras)
        emb.add_field(name="LoRAs" if len(job.loras) > 1 else "LoRA", value=literal(names, EMBED_FIELD_MAX))
    if job.input_image is not None and job.denoise is not None:
        emb.add_field(name="Upscaled ×2" if job.kind == "upscale" else "Image input",
                      value=f"strength {job.denoise:g}")
    emb.add_field(name="Model", value=job.model_id or "?")
    total = (job.timings or {}).get("total")
    emb.add_field(name="Time", value=fmt_seconds(total) if total is not None else "?")
    emb.add_field(name="Job", value=f"#{job.id}" + (f" (from #{job.parent_id})" if job.parent_id else ""))
    emb.set_image(url=f"attachment://{image_name(job.id, 0)}")
    if requester:
        emb.set_footer(text=f"Requested by {requester}")
    return emb


def jump_url(job: JobRecord) -> str | None:
    if not job.result_message_id or not (job.result_channel_id or job.channel_id):
        return None
    guild = job.guild_id if job.guild_id else "@me"
    return f"https://discord.com/channels/{guild}/{job.result_channel_id or job.channel_id}/{job.result_message_id}"


def history_embed(jobs: list[JobRecord], *, user_id: int, page: int, pages: int) -> discord.Embed:
    """One page of a user's jobs, newest first."""
    emb = discord.Embed(title="Image history", colour=COLOR_OK)
    if not jobs:
        emb.description = f"<@{user_id}> has no jobs yet. Try /imagine."
        return emb
    lines = []
    for job in jobs:
        icon = STATUS_ICONS.get(job.status, "")
        link = jump_url(job)
        jump = f" · [jump to it]({link})" if link and not job.deleted_at else ""  # never the prompt as link text
        when = _when(job.created_at)
        lines.append(f"`#{job.id}` {icon} {job.status} · seed {job.seed} · {when}{jump}\n"
                     f"{literal(job.prompt, HISTORY_PROMPT_CHARS)}")
    emb.description = f"<@{user_id}>\n\n" + "\n\n".join(lines)
    emb.set_footer(text=f"Page {page}/{pages} · /show job:<id> posts an image again")
    return emb


def _when(ts: datetime | None) -> str:
    return discord.utils.format_dt(ts, "R") if ts else "?"


@dataclass(frozen=True)
class QueueLine:
    position: int | None  # None = running
    job_id: int
    user_id: int
    prompt: str
    eta_s: float | None
    web_user: str | None = None  # a web console job: its login (bot/web/), shown instead of a Discord mention


def queue_embed(lines: list[QueueLine], *, caller_id: int, shown: int = 15,
                engine: EngineState | None = None) -> discord.Embed:
    """The running and waiting jobs, with the caller's own marked. `engine` (its state) heads the description;
    a failed engine colours the embed as a warning. Lines without an ETA (the model is still loading) show
    none."""
    failed = engine is not None and engine.failed
    ready = engine is None or engine.status is EngineStatus.READY
    emb = discord.Embed(title="Queue", colour=COLOR_BAD if failed else COLOR_OK)
    head = engine.summary() + "\n\n" if engine is not None else ""
    if not lines:
        emb.description = head + ("Nothing is waiting. /imagine starts at once." if ready else "Nothing is waiting.")
        return emb
    out = []
    for line in lines[:shown]:
        mine = " ← yours" if line.user_id == caller_id else ""
        where = "running" if line.position is None else f"#{line.position}"
        eta = f" · ~{fmt_seconds(line.eta_s)}" if line.eta_s is not None else ""
        who = f"<@{line.user_id}>" if line.web_user is None else f"web console ({literal(line.web_user, 64)})"
        out.append(f"`{where}` job {line.job_id} · {who}{eta}{mine}")
    hidden = [ln for ln in lines[shown:] if ln.user_id == caller_id]
    for line in hidden:
        eta = f" · ~{fmt_seconds(line.eta_s)}" if line.eta_s is not None else ""
        out.append(f"`#{line.position}` job {line.job_id} · yours{eta}")
    waiting = sum(1 for ln in lines if ln.position is not None)
    mine = [ln for ln in lines if ln.user_id == caller_id]
    summary = f"{waiting} waiting."
    if mine:
        summary += " Yours: " + ", ".join(("running" if ln.position is None else f"#{ln.position}") for ln in mine)
    emb.description = head + summary + "\n\n" + "\n".join(out)
    return emb
