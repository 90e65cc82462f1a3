"""Following each job from queued to its end: its status message, then its result or failure notice.

The jobs service emits `JobEvent`s (queued position/ETA, running and its steps, done, failed, cancelled). The
tracker keeps the newest state of every job it hears of and, once the job has a status message (`StatusSink`,
bot/status_sinks.py: the deferred reply of the interaction, or a channel message after a restart), edits it through
a `ThrottledEditor` (bot/throttle.py): at most one edit per `[discord] status_edit_interval_s`, latest state wins.
A waiting job's line is edited only when the change is worth it (bot/edit_policy.py). At the end of a job it closes
the line and hands the result or the failure to the `ResultPoster` (bot/results.py).

Events can arrive before the feature has answered the interaction (a tiny job may finish in milliseconds), so a
job's final step waits (briefly) until its status message is attached before delivering.

A waiting job's line also says why it cannot move when the engine is not ready ("waiting for the model to
load", or the engine's failure); `engine_changed()` redraws those lines when the engine's state changes.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

import discord

from bot.edit_policy import worth_an_edit
from bot.embeds import StatusLine, status_text
from bot.engine_state import EngineState, EngineStatus, failed_text
from bot.job_types import JobEvent
from bot.results import ResultPoster
from bot.status_sinks import ChannelStatus, InteractionStatus, StatusSink
from bot.throttle import ThrottledEditor
from bot.views import JobRef, status_view
from db import jobs as store_jobs
from db.models import WEB
from engine.job_status import JobStatus

if TYPE_CHECKING:
    from bot.service import JobService
    from db.records import JobRecord
    from db.session import Store

log = logging.getLogger(__name__)

ATTACH_WAIT_S = 10.0  # how long a finished job waits for its status message before delivering anyway


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
    remark: str = ""  # a line under the status (e.g. why a regenerated image may differ), kept to the end


class JobTracker:
    def __init__(self, client: discord.Client, service: "JobService", store: "Store", results: ResultPoster,
                 *, interval_s: float, engine_state: Callable[[], EngineState] | None = None,
                 identity: str | None = None):
        self.client = client
        self.identity = identity  # the database's, in the custom_ids of the Cancel buttons this tracker posts
        self._engine_state = engine_state or (lambda: EngineState(EngineStatus.READY))
        self.store = store
        self.results = results
        self.interval_s = interval_s
        self._jobs: dict[int, Tracked] = {}
        self._tasks: set[asyncio.Task] = set()
        self._unsubscribe = service.subscribe(self.on_event)

    # --- events (plain function: keeps the service's order) ---------------------------------------------------

    def on_event(self, ev: JobEvent) -> None:
        t = self._jobs.setdefault(ev.job_id, Tracked(ev.job_id))
        if t.final is not None:
            return
        # 1. The new state. A waiting job's minor move replaces an edit already due but asks for none.
        if ev.status is JobStatus.QUEUED:
            if t.state is not None and t.state.state is not JobStatus.QUEUED and not ev.requeued:
                return
            t.state = StatusLine(JobStatus.QUEUED, position=ev.position, eta_s=ev.eta_s)
            if t.editor is not None and not worth_an_edit(t.pushed, t.state):
                if t.editor.refresh(t.state):
                    t.pushed = t.state
                return
        elif ev.status is JobStatus.RUNNING and ev.warming_up:  # the engine compiles for its shape first
            t.started_at = t.started_at or time.monotonic()
            t.state = StatusLine(JobStatus.RUNNING, elapsed_s=time.monotonic() - t.started_at, warming_up=True)
        elif ev.status is JobStatus.RUNNING and not ev.progress:  # a worker took it
            t.started_at = time.monotonic()
            t.state = StatusLine(JobStatus.RUNNING, elapsed_s=0.0)
        elif ev.status is JobStatus.RUNNING:  # one more step
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
        await self._attach(job_id, InteractionStatus(interaction),
                           StatusLine(JobStatus.QUEUED, position=position, eta_s=eta_s))

    async def attach_channel_message(self, job_id: int, channel_id: int, message_id: int, *, prefix: str = "",
                                     saved: bool = False) -> None:
        """The job's status lives in a channel message of the bot (`saved`: its id is in the store already)."""
        self._jobs.setdefault(job_id, Tracked(job_id)).message_saved |= saved
        await self._attach(job_id, ChannelStatus(self.client, channel_id, message_id, prefix=prefix), None)

    def follow(self, job: "JobRecord", state: StatusLine) -> str:
        """Follow a job that has no status message yet (one recovered at start-up); returns its line as it would
        be shown now, for the message that will show it (`attach_channel_message`)."""
        t = self._jobs.setdefault(job.id, Tracked(job.id, prompt=job.prompt))
        t.state = t.state or state
        return status_text(job.id, job.prompt, self._with_engine_note(t.state))

    def remark(self, job_id: int, text: str) -> None:
        """A line shown under the job's status from now to its end (`/show`: why its pixels may differ)."""
        t = self._jobs.setdefault(job_id, Tracked(job_id))
        t.remark = text
        if t.editor is not None and t.state is not None and t.final is None:
            _push(t, t.state)

    def without_status_message(self, job_id: int) -> None:
        """This job gets no status message (no channel, or Discord refused it): its end is delivered at once."""
        self._jobs.setdefault(job_id, Tracked(job_id)).attached.set()

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
        waiting = st.state in (JobStatus.QUEUED, JobStatus.RUNNING)
        view = status_view(JobRef(t.job_id, self.identity)) if waiting else None
        text = status_text(t.job_id, t.prompt, self._with_engine_note(st))
        message_id = await t.sink.edit(f"{text}\n{t.remark}" if t.remark else text, view)
        if message_id:
            t.shown = st
        if message_id and not t.message_saved:
            t.message_saved = await store_jobs.set_status_message(self.store, t.job_id, message_id)

    def _with_engine_note(self, st: StatusLine) -> StatusLine:
        """A waiting job's state with the reason it cannot move yet, read when the line is drawn."""
        engine = self._engine_state()
        if st.state is not JobStatus.QUEUED or engine.status is EngineStatus.READY:
            return st
        if engine.status is EngineStatus.LOADING:
            return replace(st, note="waiting for the model to load")
        return replace(st, note=f"⚠️ {failed_text(engine.reason)} This job stays saved and runs once the bot is "
                                f"fixed and restarted; Cancel removes it.")

    def engine_changed(self) -> None:
        """The engine's state changed: redraw the line of every waiting job that has a status message."""
        for t in list(self._jobs.values()):
            waiting = t.state is not None and t.state.state is JobStatus.QUEUED
            if t.editor is not None and t.final is None and waiting:
                _push(t, t.state)

    # --- the end of a job -----------------------------------------------------------------------------------------

    async def _finish(self, t: Tracked, ev: JobEvent) -> None:
        try:
            if ev.record is not None and ev.record.source == WEB:
                return  # a web console job: the page that asked shows it (bot/web/); nothing goes to Discord
            # 1. Give the feature a moment to attach the status message (a tiny job can beat the reply).
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
                await asyncio.gather(closing, self.results.deliver(job, upload_limit=t.upload_limit))
            elif ev.status is JobStatus.FAILED:
                await closing
                if t.shown == final:  # the status message says why
                    await store_jobs.mark_delivered(self.store, job.id)
                else:
                    await self.results.notify_failure(job, ev.message or job.error or "unknown error")
            else:
                await closing
        except Exception:
            log.exception("job %d: finishing its messages failed", t.job_id)
        finally:
            self._jobs.pop(t.job_id, None)

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


def _push(t: Tracked, state: StatusLine) -> None:
    """Hand `state` to the job's editor (at most one edit per interval; the newest state wins)."""
    t.pushed = state
    t.editor.push(state)


def _final_state(job: "JobRecord", ev: JobEvent) -> StatusLine:
    if ev.status is JobStatus.DONE:
        return StatusLine(JobStatus.DONE, elapsed_s=job.timings.get("total"))
    if ev.status is JobStatus.FAILED:
        return StatusLine(JobStatus.FAILED, error=ev.message or job.error or "")
    return StatusLine(JobStatus.CANCELLED)


async def _nothing() -> None:
    return None
