"""Following each job from queued to delivered: its status message and its result.

The jobs service emits `JobEvent`s (queued position/ETA, started, step progress, finished, failed,
cancelled). The tracker keeps the newest state of every job it hears of and, once the job has a status
message (the deferred reply of the interaction, or a channel message after a restart), edits it through a
`ThrottledEditor`: at most one edit per `[discord] status_edit_interval_s`, latest state wins. A waiting job's
line is edited only when the change is worth it (`worth_an_edit`: its position moved noticeably or its ETA moved
a lot): every queue movement re-announces every waiting job, and those edits were half of the bot's REST traffic
under load (docs/reliability.md "Load"). Running progress and the final state are always shown.

Events can arrive before the cog has answered the interaction (a tiny job may finish in milliseconds), so a
job's final step waits (briefly) until its status message is attached before delivering.

A waiting job's line also says why it cannot move when the engine is not ready ("waiting for the model to
load", or the engine's failure); `engine_changed()` redraws those lines when the engine's state changes.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import discord

from bot import job_types as jt
from bot.delivery import MAX_DELIVERY_REFUSALS, Deliverer, Payload, Target, Undelivered, is_refusal
from bot.engine_state import EngineState, EngineStatus, failed_text
from bot.embeds import STATUS_PROMPT_CHARS, StatusLine, image_name, result_embed, status_text
from bot.literal import echo_mentions, literal
from bot.throttle import ThrottledEditor
from bot.views import JobRef, result_view, status_view
from db import deliveries
from db import jobs as store_jobs
from engine.job_status import JobStatus

if TYPE_CHECKING:
    from bot.service import JobService
    from db.records import JobRecord
    from db.session import Store

log = logging.getLogger(__name__)

# A waiting job's line is edited again when (against what it shows or is about to show) its position is one of
# the first FRONT_POSITIONS and changed, or moved by at least POSITION_STEP of the shown position (40 → 30,
# 8 → 6), or its ETA moved by at least max(ETA_STEP_S, ETA_STEP of the shown ETA).
FRONT_POSITIONS = 3
POSITION_STEP = 0.25
ETA_STEP = 0.25
ETA_STEP_S = 10.0
ATTACH_WAIT_S = 10.0  # how long a finished job waits for its status message before delivering anyway
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024  # Discord's per-file limit for bots when nothing better is known


class StatusSink(Protocol):
    """A message that shows one job's status."""

    def usable(self) -> bool: ...

    async def edit(self, content: str, view: discord.ui.View | None) -> int | None: ...


class InteractionStatus:
    """The interaction's own reply, edited through its token while the token lives (15 min)."""

    def __init__(self, interaction: discord.Interaction):
        self.interaction = interaction
        self.gone = False  # Discord said the token or the message no longer exists

    def usable(self) -> bool:
        return not self.gone and not self.interaction.is_expired()

    async def edit(self, content: str, view: discord.ui.View | None) -> int | None:
        if not self.usable():
            return None
        try:
            msg = await self.interaction.edit_original_response(content=content, view=view,
                                                                allowed_mentions=echo_mentions())
        except discord.NotFound as e:  # token expired early, or someone deleted the message
            self.gone = True
            log.info("status message of interaction %s is gone (%s); no more status edits", self.interaction.id,
                     e.code)
            return None
        return msg.id


class ChannelStatus:
    """A normal channel message of the bot, edited with the bot token (no time limit)."""

    def __init__(self, client: discord.Client, channel_id: int, message_id: int, *, prefix: str = ""):
        self.message = client.get_partial_messageable(channel_id).get_partial_message(message_id)
        self.prefix = prefix  # a line kept above the status (e.g. why this message exists)

    def usable(self) -> bool:
        return True

    async def edit(self, content: str, view: discord.ui.View | None) -> int | None:
        await self.message.edit(content=self.prefix + content, view=view, allowed_mentions=echo_mentions())
        return self.message.id


@dataclass
class Tracked:
    job_id: int
    prompt: str = ""
    state: StatusLine | None = None
    sink: StatusSink | None = None
    editor: ThrottledEditor[StatusLine] | None = None
    started_at: float | None = None
    attached: asyncio.Event = field(default_factory=asyncio.Event)
    final: asyncio.Task | None = None
    message_saved: bool = False  # the status message id is in the store
    shown: StatusLine | None = None  # the last state an edit really showed
    pushed: StatusLine | None = None  # the last state handed to the editor (shown, or about to be)
    upload_limit: int | None = None  # bytes per file, from the interaction


class JobTracker:
    def __init__(self, client: discord.Client, service: "JobService", store: "Store", deliverer: Deliverer,
                 *, interval_s: float, engine_state: Callable[[], EngineState] | None = None,
                 identity: str | None = None):
        self.client = client
        self.identity = identity  # the database's, in the custom_ids of the buttons this tracker posts
        self._engine_state = engine_state or (lambda: EngineState(EngineStatus.READY))
        self.service = service
        self.store = store
        self.deliverer = deliverer
        self.interval_s = interval_s
        self._jobs: dict[int, Tracked] = {}
        self._tasks: set[asyncio.Task] = set()
        self._unsubscribe = service.subscribe(self.on_event)

    # --- events (plain function: keeps the service's order) ---------------------------------------------------

    def on_event(self, ev: jt.JobEvent) -> None:
        t = self._jobs.setdefault(ev.job_id, Tracked(ev.job_id))
        if t.final is not None:
            return
        # 1. The new state. A waiting job's minor move replaces an edit already due but asks for none.
        if ev.status is JobStatus.QUEUED:
            if t.state is not None and t.state.state != JobStatus.QUEUED:
                return
            t.state = StatusLine(JobStatus.QUEUED, position=ev.position, eta_s=ev.eta_s)
            if t.editor is not None and not worth_an_edit(t.pushed, t.state):
                if t.editor.refresh(t.state):
                    t.pushed = t.state
                return
        elif ev.status is JobStatus.RUNNING and not ev.progress:
            t.started_at = time.monotonic()
            t.state = StatusLine(JobStatus.RUNNING, elapsed_s=0.0)
        elif ev.status is JobStatus.RUNNING:
            t.started_at = t.started_at or time.monotonic()
            t.state = StatusLine(JobStatus.RUNNING, step=ev.step or 0, total=ev.total or 0,
                                elapsed_s=time.monotonic() - t.started_at)
        elif ev.status.finished:
            t.final = self._spawn(self._finish(t, ev), f"fluxbot-finish-{ev.job_id}")
            return
        # 2. Shown when the job has a status message.
        if t.editor is not None and t.state is not None:
            _push(t, t.state)

    # --- status messages ----------------------------------------------------------------------------------------

    async def attach_interaction(self, job_id: int, interaction: discord.Interaction, *, position: int | None,
                                 eta_s: float | None) -> None:
        """The job's status lives in the (deferred) reply of `interaction`; show it now."""
        self._jobs.setdefault(job_id, Tracked(job_id)).upload_limit = getattr(interaction, "filesize_limit", None)
        await self._attach(job_id, InteractionStatus(interaction), StatusLine(JobStatus.QUEUED, position=position, eta_s=eta_s))

    async def attach_channel_message(self, job_id: int, channel_id: int, message_id: int, *,
                                     prefix: str = "") -> None:
        await self._attach(job_id, ChannelStatus(self.client, channel_id, message_id, prefix=prefix), None)

    async def _attach(self, job_id: int, sink: StatusSink, initial: StatusLine | None) -> None:
        t = self._jobs.setdefault(job_id, Tracked(job_id))
        if not t.prompt:
            job = await store_jobs.get_job(self.store, job_id)
            t.prompt = job.prompt if job else ""
        t.sink = sink
        t.editor = ThrottledEditor(lambda st, t=t: self._show(t, st), self.interval_s)
        t.state = t.state or initial
        if t.state is not None and t.final is None:
            _push(t, t.state)
        t.attached.set()

    async def _show(self, t: Tracked, st: StatusLine) -> None:
        if t.sink is None or not t.sink.usable():
            return
        view = status_view(self.ref(t.job_id)) if st.state in (JobStatus.QUEUED, JobStatus.RUNNING) else None
        message_id = await t.sink.edit(status_text(t.job_id, t.prompt, self._with_engine_note(st)), view)
        if message_id:
            t.shown = st
        if message_id and not t.message_saved:
            t.message_saved = await store_jobs.set_status_message(self.store, t.job_id, message_id)

    def _with_engine_note(self, st: StatusLine) -> StatusLine:
        """A waiting job's state with the reason it cannot move yet, read when the line is drawn."""
        engine = self._engine_state()
        if st.state != JobStatus.QUEUED or engine.status is EngineStatus.READY:
            return st
        if engine.status is EngineStatus.LOADING:
            return replace(st, note="waiting for the model to load")
        return replace(st, note=f"⚠️ {failed_text(engine.reason)} This job stays saved and runs once the bot is "
                                f"fixed and restarted; Cancel removes it.")

    def engine_changed(self) -> None:
        """The engine's state changed: redraw the line of every waiting job that has a status message."""
        for t in list(self._jobs.values()):
            if t.editor is not None and t.final is None and t.state is not None and t.state.state == JobStatus.QUEUED:
                _push(t, t.state)

    # --- the end of a job -----------------------------------------------------------------------------------------

    async def _finish(self, t: Tracked, ev: jt.JobEvent) -> None:
        try:
            # 1. Give the cog a moment to attach the status message (a tiny job can beat the reply).
            try:
                await asyncio.wait_for(t.attached.wait(), ATTACH_WAIT_S)
            except asyncio.TimeoutError:
                log.warning("job %d ended before its status message existed", t.job_id)
            job = ev.record or await store_jobs.get_job(self.store, t.job_id)
            if job is None:
                return
            # 2. The last status edit, and the result or the failure notice.
            final = _final_state(job, ev)
            closing = t.editor.close(final) if t.editor is not None else _nothing()
            if ev.status is JobStatus.DONE:
                await asyncio.gather(closing, self.deliver(job))
            elif ev.status is JobStatus.FAILED:
                await closing
                if t.shown == final:  # the status message says why
                    await store_jobs.mark_delivered(self.store, job.id)
                else:
                    await self._notify_failure(job, ev.message or job.error or "unknown error")
            else:
                await closing
        except Exception:
            log.exception("job %d: finishing its messages failed", t.job_id)
        finally:
            self._jobs.pop(t.job_id, None)

    async def deliver(self, job: "JobRecord") -> bool:
        """Post a done job's images (followup, else channel message) and record where they went."""
        target = Target(application_id=self.client.application_id, token=job.interaction_token,
                        token_created_at=job.interaction_created_at, channel_id=job.channel_id,
                        user_id=job.user_id)
        t = self._jobs.get(job.id)
        payload = await self.result_payload(job, upload_limit=t.upload_limit if t else None)
        delivered = await self.deliverer.deliver(target, lambda: payload, job_id=job.id)
        if isinstance(delivered, Undelivered):
            if delivered.refused:
                await self._refused(job, delivered.reason)
            return False
        await store_jobs.set_message(self.store, job.id, delivered.channel_id, delivered.message_id)
        await store_jobs.mark_delivered(self.store, job.id)
        log.info("job %d delivered by %s", job.id, delivered.via)
        return True

    async def result_payload(self, job: "JobRecord", *, upload_limit: int | None = None) -> Payload:
        """The result message of a done job: its PNGs read from disk, the embed and the four buttons. A PNG
        larger than Discord's upload limit (per file) is left out, and the message says so."""
        limit = upload_limit or self._guild_upload_limit(job.guild_id)
        paths = [Path(i.path) for i in job.images]
        blobs = await asyncio.to_thread(lambda: [p.read_bytes() for p in paths])
        files = [(image_name(job.id, i), data) for i, data in enumerate(blobs) if len(data) <= limit]
        content = f"<@{job.user_id}>"
        if len(files) < len(blobs):
            content += (f" ⚠️ {len(blobs) - len(files)} of {len(blobs)} image(s) are larger than Discord's upload "
                        f"limit here ({limit / 2**20:.0f} MiB) and could not be attached; a smaller size fits.")
            log.warning("job %d: %d image(s) over the %d-byte upload limit left out", job.id,
                        len(blobs) - len(files), limit)
        return Payload(content=content, embed=result_embed(job), files=files, view=result_view(self.ref(job.id)),
                       mention_user_id=job.user_id)

    def _guild_upload_limit(self, guild_id: int | None) -> int:
        guild = self.client.get_guild(guild_id) if guild_id else None
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT

    async def _notify_failure(self, job: "JobRecord", message: str) -> None:
        if job.channel_id is None:
            return
        shown = literal(job.prompt, STATUS_PROMPT_CHARS)
        text = f"<@{job.user_id}> ⚠️ Job #{job.id} (**{shown}**) failed: {message}"
        try:
            channel = self.client.get_partial_messageable(job.channel_id)
            await channel.send(text, allowed_mentions=echo_mentions(job.user_id))
            await store_jobs.mark_delivered(self.store, job.id)
        except discord.HTTPException as e:
            log.error("job %d: could not tell user %d that it failed (HTTP %s)", job.id, job.user_id, e.status)
            if is_refusal(e):
                await self._refused(job, f"HTTP {e.status} {e.text[:200]}")

    async def _refused(self, job: "JobRecord", reason: str) -> None:
        """Discord refused this job's delivery for good (403/404): count it; at the bound, stop trying."""
        count = await deliveries.record_refusal(self.store, job.id, reason, limit=MAX_DELIVERY_REFUSALS)
        if count >= MAX_DELIVERY_REFUSALS:
            log.warning("job %d: Discord refused its delivery %d times (last: %s); the bot stops trying. The result "
                        "stays in the database: /show job:%d posts it elsewhere", job.id, count, reason, job.id)
        else:
            log.info("job %d: delivery refused (%s), %d of %d; tried again at the next start-up", job.id, reason,
                     count, MAX_DELIVERY_REFUSALS)

    # --- restart ---------------------------------------------------------------------------------------------------

    async def announce_recovered(self, jobs: list["JobRecord"]) -> None:
        """Tell each owner in their channel that their job is back in the queue; that message then shows its
        status (the old reply's token may have expired while the bot was down)."""
        for job in jobs:
            try:
                await self._announce_recovered(job)
            except Exception:  # one job's trouble must not stop the start-up, nor the other jobs
                log.exception("job %d: telling its owner about the restart failed; going on with the next job", job.id)
                self._jobs.setdefault(job.id, Tracked(job.id, prompt=job.prompt)).attached.set()

    async def _announce_recovered(self, job: "JobRecord") -> None:
        t = self._jobs.setdefault(job.id, Tracked(job.id, prompt=job.prompt))
        position = self.service.queue.position(job.id)
        t.state = t.state or StatusLine(JobStatus.QUEUED, position=position, eta_s=self.service.queue.eta_s(job.id))
        if job.channel_id is None:
            t.attached.set()
            return
        prefix = f"<@{job.user_id}> The bot restarted; job #{job.id} is back in the queue.\n"
        text = prefix + status_text(job.id, job.prompt, self._with_engine_note(t.state))
        try:
            msg = await self.client.get_partial_messageable(job.channel_id).send(
                text, view=status_view(self.ref(job.id)),
                allowed_mentions=echo_mentions(job.user_id))
        except discord.HTTPException as e:
            log.warning("job %d: could not tell user %d about the restart (HTTP %s)", job.id, job.user_id,
                        e.status)
            t.attached.set()
            return
        t.message_saved = await store_jobs.set_status_message(self.store, job.id, msg.id)
        await self.attach_channel_message(job.id, job.channel_id, msg.id, prefix=prefix)

    async def deliver_undelivered(self) -> int:
        """Results that were made but never reached Discord (the bot stopped in between), and failure notices.
        Never stops the start-up: each job's trouble is logged and the next job goes on."""
        sent = 0
        for job in await store_jobs.undelivered_jobs(self.store):
            try:
                sent += await self._deliver_left_over(job)
            except Exception:
                log.exception("job %d: delivering it at start-up failed; going on with the next job", job.id)
        return sent

    async def _deliver_left_over(self, job: "JobRecord") -> bool:
        # 1. A failure notice.
        if job.status == JobStatus.FAILED:
            await self._notify_failure(job, job.error or "unknown error")
            return False
        # 2. A result whose PNG is gone (pruned, or removed by hand while the bot was down): say how to get it
        #    back (/show makes the same pixels again from the record) instead of posting it.
        missing = [i.path for i in job.images if not Path(i.path).is_file()]
        if missing or not job.images:
            return await self._notify_missing_image(job, missing)
        # 3. The result.
        return await self.deliver(job)

    async def _notify_missing_image(self, job: "JobRecord", missing: list[str]) -> bool:
        log.warning("job %d: its result was never delivered and its image file is gone (%s); telling user %d that "
                    "/show job:%d makes it again", job.id, ", ".join(missing) or "no image recorded", job.user_id,
                    job.id)
        target = Target(application_id=self.client.application_id, token=job.interaction_token,
                        token_created_at=job.interaction_created_at, channel_id=job.channel_id,
                        user_id=job.user_id)
        text = (f"<@{job.user_id}> Job #{job.id} (**{literal(job.prompt, STATUS_PROMPT_CHARS)}**) was made while the "
                f"bot could not post it, and its image file is gone since. `/show job:{job.id}` makes it again (same "
                f"seed, same image).")
        payload = Payload(content=text, embed=None, files=[], view=None, mention_user_id=job.user_id)
        outcome = await self.deliverer.deliver(target, lambda: payload, job_id=job.id)
        if isinstance(outcome, Undelivered):
            if outcome.refused:
                await self._refused(job, outcome.reason)
            return False
        await deliveries.mark_undeliverable(self.store, job.id, "its image file was gone when the bot could post "
                                                                "it; the user was told that /show makes it again")
        await store_jobs.mark_delivered(self.store, job.id)
        return False

    def ref(self, job_id: int) -> JobRef:
        """What this bot's buttons for `job_id` name (bot.views)."""
        return JobRef(job_id, self.identity)

    # --- housekeeping ------------------------------------------------------------------------------------------------

    def tracked(self) -> list[int]:
        return list(self._jobs)

    async def close(self) -> None:
        self._unsubscribe()
        for t in list(self._jobs.values()):
            if t.editor is not None:
                t.editor.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def worth_an_edit(shown: StatusLine | None, new: StatusLine) -> bool:
    """Whether a waiting job's new position/ETA deserves an edit of its line, against what the line shows (or is
    about to show). Anything that is not a waiting-to-waiting change always does."""
    # 1. Nothing shown yet, or a change of state: always.
    if shown is None or shown.state != JobStatus.QUEUED or new.state != JobStatus.QUEUED:
        return True
    # 2. The position: every change near the front, a noticeable share of it further back.
    if new.position != shown.position:
        if new.position is None or shown.position is None or new.position <= FRONT_POSITIONS:
            return True
        if abs(shown.position - new.position) >= POSITION_STEP * shown.position:
            return True
    # 3. The ETA: a lot, in seconds and in share.
    if (new.eta_s is None) != (shown.eta_s is None):
        return True
    if new.eta_s is not None and shown.eta_s is not None:
        return abs(new.eta_s - shown.eta_s) >= max(ETA_STEP_S, ETA_STEP * shown.eta_s)
    return False


def _push(t: Tracked, state: StatusLine) -> None:
    """Hand `state` to the job's editor (at most one edit per interval; the newest state wins)."""
    t.pushed = state
    t.editor.push(state)


def _final_state(job: "JobRecord", ev: jt.JobEvent) -> StatusLine:
    if ev.status is JobStatus.DONE:
        return StatusLine(JobStatus.DONE, elapsed_s=job.timings.get("total"))
    if ev.status is JobStatus.FAILED:
        return StatusLine(JobStatus.FAILED, error=ev.message or job.error or "")
    return StatusLine(JobStatus.CANCELLED)


async def _nothing() -> None:
    return None
