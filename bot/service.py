"""The jobs service: the one place that talks to both the store and the queue.

The bot calls `submit`, `cancel` and `recover`; the workers call the `WorkerHooks` methods
(`on_started` …); the bot listens to `JobEvent`s (`subscribe`) to edit "queued #3, ~40 s" and "step 7/20"
messages and to deliver results. Nothing here imports discord or torch.

Admission order (a refusal is an `AdmissionError` whose message is shown to the user as is):
1. the prompt: not empty, not too long, no banned word (NFKC, case-folded, look-alike letters folded,
   whole words);
2. the image count;
3. from the store (so that limits survive a restart): the user's unfinished jobs and cooldown (admins skip these);
4. the queue caps: the guild's unfinished jobs (`max_unfinished_per_guild`, DMs counted as one guild) and the
   global queue cap. No admin skips them; owners do only with `[limits] owners_skip_queue_caps`.
Then the job row is written (status queued) and only then put in the queue, in fair order (round-robin across
users, FIFO within one: `engine/queue.py`).
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from bot.admission_errors import (BannedWord, CoolingDown, EmptyPrompt, GuildQueueFull, JobTooCostly, PromptTooLong,
                                  QueueFull, ShuttingDown, StoreGone, TooManyImages, TooManyUnfinished)
from bot.banned_words import BannedWords
from bot.job_types import CancelOutcome, JobEvent, Listener, NewRequest, Submitted, spec_of, with_recipe_of
from bot.lora_choice import stored
from bot.result_files import write_pngs
from bot.user_turns import UserTurns
from db import jobs as store_jobs
from db.errors import is_store_busy
from db.guard import DatabaseGone
from db.models import DISCORD, WEB
from db.records import JobOutput, JobRecord, NewJob
from engine import limits as job_limits  # the shared limits and checks
from engine.image_files import IdMark
from engine.job_status import JobStatus
from engine.listeners import Listeners
from engine.queue import JobQueue, QueueClosed, QueueEvent
from engine.spec import JobSpec, Result

if TYPE_CHECKING:
    from bot.config import LimitsSettings
    from db.session import Store
    from engine.worker import Worker

log = logging.getLogger(__name__)


# --- the service ----------------------------------------------------------------------------------------------

# Waits between tries of a result's write while SQLite is locked past its busy timeout (about 2 minutes).
BUSY_RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)


class JobService:
    """Admission, submit, cancel, recovery and result saving. Implements `engine.worker.WorkerHooks`."""

    def __init__(self, store: "Store", queue: JobQueue, workers: list["Worker"] | None, limits: "LimitsSettings",
                 banned_words: list[str], images_dir: str | Path, *, model_id: str | None = None,
                 identity: str | None = None):
        self.store = store
        self.queue = queue
        self.workers: list[Worker] = list(workers or [])
        self.limits = limits
        self.banned = BannedWords(banned_words)
        self.images_dir = Path(images_dir)
        self.identity = identity  # the database's, in image file names (engine.image_files); None: names without
        self.id_mark = IdMark(self.images_dir)  # the highest job id written here, per identity
        self.model_id = model_id
        self._listeners: Listeners[JobEvent] = Listeners("job event")
        self.busy_retry_delays_s: tuple[float, ...] = BUSY_RETRY_DELAYS_S
        self._admission = asyncio.Lock()  # two requests of one user must not both pass the limit check
        self._in_admission = 0  # requests between arrival and the end of their admission (see `admission`)
        self.turns = UserTurns()  # a user's requests are admitted in arrival order (`user_turn`)
        self._unsubscribe_queue = queue.subscribe(self._on_queue_event)

    # --- listeners -------------------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Hear every JobEvent (a plain function or a coroutine function; it must not block)."""
        return self._listeners.subscribe(listener)

    def _emit(self, event: JobEvent) -> None:
        self._listeners.emit(event)

    def _on_queue_event(self, event: QueueEvent) -> None:
        if event.status is JobStatus.QUEUED:
            self._emit(JobEvent(event.job_id, JobStatus.QUEUED, position=event.position, eta_s=event.eta_s))
        elif event.status is JobStatus.RUNNING and event.warming_up:   # its first step compiles (engine/compile.py)
            self._emit(JobEvent(event.job_id, JobStatus.RUNNING, warming_up=True))

    def recipe_differences(self, stored: dict | None) -> list[str] | None:
        """What the running engines would make differently from a job made with the recipe `stored`
        (engine/recipe.py): [] for the same pixels on whichever worker takes the job; else each difference any
        worker's engine would make, once (workers may differ: GPUs of other kinds, a bf16 copy held on one of them);
        None when no engine runs yet (it cannot tell)."""
        found: list[str] | None = None
        for worker in self.workers:
            differences = getattr(worker.engine, "recipe_differences", None)
            if differences is None:
                continue
            found = found or []
            found += [d for d in differences(stored) if d not in found]
        return found

    # --- admission and submit ----------------------------------------------------------------------------

    @contextmanager
    def admission(self) -> Iterator[int]:
        """`with service.admission() as ahead:` around one request's admission (entered when the request arrives,
        before its first await). `ahead` is how many other requests were being admitted already: more than none
        means this one waits for them (admissions run one at a time), so the bot answers it at once."""
        ahead = self._in_admission
        self._in_admission += 1
        try:
            yield ahead
        finally:
            self._in_admission -= 1

    def user_turn(self, user_id: int):
        """`async with service.user_turn(uid):` around everything a request does before `submit` returns (reading
        its parent job included), so that one user's requests are admitted in the order they arrived."""
        return self.turns.turn(user_id)

    def check_prompt(self, prompt: str) -> str:
        """The prompt, cleaned (engine/limits.py), or an AdmissionError saying what to change."""
        try:
            text = job_limits.check_prompt(prompt, self.limits.max_prompt_chars)
        except job_limits.PromptEmpty as e:
            raise EmptyPrompt(str(e)) from None
        except job_limits.PromptTooLong as e:
            raise PromptTooLong(str(e)) from None
        word = self.banned.find(text)
        if word is not None:
            raise BannedWord(f"The prompt contains a word this bot does not accept ({word!r}); "
                             f"rephrase it without that word.", word)
        return text

    def check_cost(self, spec: JobSpec) -> None:
        """JobTooCostly when images x steps x megapixels is over `[limits] max_job_cost`."""
        try:
            job_limits.check_cost(spec.count, spec.steps, spec.width, spec.height, self.limits.max_job_cost)
        except job_limits.JobTooCostly as e:
            raise JobTooCostly(str(e)) from None

    def check_store(self) -> None:
        """A database file deleted or replaced under the bot takes no job: the user reads why."""
        try:
            self.store.check()
        except DatabaseGone as e:
            raise StoreGone(str(e)) from None

    async def submit(self, request: NewRequest) -> Submitted:
        """Admit the request, write the job row, then queue it."""
        # 1. checks that need nothing but the request (and a database that is still there: db.guard)
        self.check_store()
        prompt = self.check_prompt(request.spec.prompt)
        if request.spec.count > self.limits.max_count:
            raise TooManyImages(f"At most {self.limits.max_count} images per request.")
        self.check_cost(request.spec)
        spec = replace(request.spec, prompt=prompt).resolve()
        async with self._admission:
            # 2. per-user limits, from the store
            if not request.exempt:
                await self._check_user(request.user_id)
            # 3. the queue caps: this guild's share, then everyone's
            if not request.skips_queue_caps:
                await self._check_guild(request.guild_id, request.source)
                if len(self.queue) >= self.limits.queue_cap:
                    raise QueueFull(f"The queue is full ({len(self.queue)} jobs waiting); try again in a few "
                                    f"minutes.")
            # 4. the row first, then the queue
            record = await store_jobs.create_job(self.store, NewJob(
                user_id=request.user_id, prompt=spec.prompt, seed=spec.seed, steps=spec.steps, width=spec.width,
                height=spec.height, guidance=spec.guidance, count=spec.count, guild_id=request.guild_id,
                channel_id=request.channel_id, variation_seed=spec.variation_seed,
                variation_strength=spec.variation_strength, parent_id=request.parent_id, kind=request.kind,
                source=request.source, user_name=request.user_name, model_id=self.model_id,
                interaction_id=request.interaction_id,
                interaction_token=request.interaction_token, interaction_created_at=request.interaction_created_at,
                status_message_id=request.status_message_id, loras=stored(spec.loras), input_image=spec.image,
                input_sha256=spec.image_sha256, denoise=spec.denoise if spec.image is not None else None))
            try:
                position = self.queue.submit(record.id, spec, owner=request.user_id)
            except QueueClosed:  # the row stays queued: recovery runs it at the next start
                raise ShuttingDown("The bot is shutting down; your request is saved and will run when it is "
                                   "back.") from None
        eta = self.queue.eta_s(record.id) or 0.0
        log.info("job %d queued at #%d for user %d (%s, %dx%d, %d steps)", record.id, position, request.user_id,
                 request.kind, spec.width, spec.height, spec.steps)
        return Submitted(job_id=record.id, position=position, eta_s=eta, seed=spec.seed)

    async def _check_user(self, user_id: int) -> None:
        limit = self.limits.max_unfinished_per_user
        unfinished = await store_jobs.count_unfinished(self.store, user_id)
        if unfinished >= limit:
            raise TooManyUnfinished(f"You already have {unfinished} unfinished job(s) (the limit is {limit}); "
                                    f"wait for one to finish or cancel one.")
        if self.limits.cooldown_s > 0:
            last = await store_jobs.last_request_at(self.store, user_id)
            if last is not None:
                waited = (datetime.now(timezone.utc) - last).total_seconds()
                left = self.limits.cooldown_s - waited
                if left > 0:
                    raise CoolingDown(f"Please wait {left:.0f} s before your next request.", left)

    async def _check_guild(self, guild_id: int | None, source: str = DISCORD) -> None:
        limit = self.limits.max_unfinished_per_guild
        if limit <= 0:
            return
        unfinished = await store_jobs.count_unfinished_in_guild(self.store, guild_id, source)
        if unfinished >= limit:
            where = ("The web console has" if source == WEB else
                     "Direct messages with this bot have" if guild_id is None else "This server has")
            raise GuildQueueFull(f"{where} {unfinished} unfinished job(s) already (the limit is {limit}); try "
                                 f"again when some have finished.")

    # --- cancel ---------------------------------------------------------------------------------------------

    async def cancel(self, job_id: int) -> CancelOutcome:
        """Cancel a job: a waiting one leaves the queue at once, a running one stops at its next step. Who may is
        the caller's check, made once (`bot.permissions.check_may_manage`, guild-scoped admins)."""
        # 1. still there, not final
        job = await store_jobs.get_job(self.store, job_id)
        if job is None:
            return CancelOutcome.NOT_FOUND
        if job.finished:
            return CancelOutcome.ALREADY_FINISHED
        # 2. waiting: out of the FIFO, then the row
        if self.queue.remove(job_id):
            await self._cancelled(job_id)
            return CancelOutcome.CANCELLED
        # 3. running: the worker's flag; its on_cancelled hook writes the row
        if any(w.cancel(job_id) for w in self.workers):
            return CancelOutcome.STOPPING
        # 4. in the store but neither waiting nor running (e.g. left behind by a crash before recovery)
        if self.queue.is_running(job_id):
            log.warning("job %d is running but no worker owns it; marking it cancelled", job_id)
        await self._cancelled(job_id)
        return CancelOutcome.CANCELLED

    async def _cancelled(self, job_id: int) -> None:
        if await store_jobs.cancel_job(self.store, job_id):
            log.info("job %d cancelled", job_id)
            self._emit(JobEvent(job_id, JobStatus.CANCELLED, record=await store_jobs.get_job(self.store, job_id)))

    # --- restart recovery ------------------------------------------------------------------------------------

    async def recover(self) -> list[JobRecord]:
        """At start-up, before the workers take anything: put every queued or running job back on the queue, in id
        (= arrival) order with their owners, so the queue rebuilds the fair order (a running one starts again from
        scratch: same seed, same image). Returns them so the bot can tell their owners in their channel."""
        jobs = await store_jobs.unfinished_jobs(self.store)
        recovered = []
        for job in jobs:
            if job.id in self.queue:
                continue
            if job.status is JobStatus.RUNNING:
                await store_jobs.requeue(self.store, job.id)
            self.queue.submit(job.id, await self._spec_again(job), owner=job.user_id)
            recovered.append(job)
        if recovered:
            log.info("recovered %d unfinished job(s): %s", len(recovered), [j.id for j in recovered])
        return recovered

    async def _spec_again(self, job: JobRecord) -> JobSpec:
        """The spec an unfinished job runs again with; a `show` job (a pruned image made again) asks for the engine
        recipe of the job it makes again, as `job_types.remade` did when it was queued."""
        spec = spec_of(job)
        if job.kind != "show" or job.parent_id is None:
            return spec
        shown = await store_jobs.get_job(self.store, job.parent_id)
        return with_recipe_of(spec, shown) if shown is not None else spec

    # --- worker hooks ------------------------------------------------------------------------------------------

    async def on_started(self, job_id: int) -> None:
        if not await store_jobs.mark_running(self.store, job_id):
            log.warning("job %d started but its row was not queued (cancelled meanwhile?)", job_id)
        self._emit(JobEvent(job_id, JobStatus.RUNNING))

    def on_progress(self, job_id: int, step: int, total: int) -> None:
        self._emit(JobEvent(job_id, JobStatus.RUNNING, step=step, total=total))

    async def on_finished(self, job_id: int, result: Result) -> None:
        # 1. the PNGs, off the event loop (encoding and writing take tens of ms)
        try:
            images = await asyncio.to_thread(write_pngs, self.images_dir, self.identity, self.id_mark, job_id, result)
        except OSError as e:
            log.error("job %d: saving its images failed: %s", job_id, e)
            await self.on_failed(job_id, f"The image was made but could not be saved ({e.strerror or e}); "
                                         f"the bot's owner should check the disk.")
            return
        # 2. the row
        output = JobOutput(seeds=list(result.seeds), images=images, timings=dict(result.timings),
                           precision=result.precision, profile=result.profile, model_id=result.model_id,
                           recipe=dict(result.recipe) or None)
        if not await self._while_busy(f"job {job_id}: recording its result",
                                      lambda: store_jobs.finish_job(self.store, job_id, output)):
            log.warning("job %d finished but its row was already final; result not recorded", job_id)
            return
        # 3. the bot
        record = await store_jobs.get_job(self.store, job_id)
        log.info("job %d done in %.1f s", job_id, result.timings.get("total", 0.0))
        self._emit(JobEvent(job_id, JobStatus.DONE, record=record))

    async def _while_busy(self, what: str, write: Callable[[], Any]) -> Any:
        """Run a store write; while another program holds SQLite past its busy timeout, wait and try again
        (a finished image must not stay `running` until the next restart because of a backup or a viewer).
        After `BUSY_RETRY_DELAYS_S` the error goes up: the job stays `running` and a restart reruns it."""
        for delay in (*self.busy_retry_delays_s, None):
            try:
                return await write()
            except Exception as e:
                if delay is None or not is_store_busy(e):
                    raise
                log.warning("%s: the database is locked by another program; trying again in %.0f s", what, delay)
                await asyncio.sleep(delay)

    async def on_failed(self, job_id: int, message: str) -> None:
        if await store_jobs.fail_job(self.store, job_id, message):
            log.info("job %d failed: %s", job_id, message)
            self._emit(JobEvent(job_id, JobStatus.FAILED, message=message,
                                record=await store_jobs.get_job(self.store, job_id)))

    async def on_cancelled(self, job_id: int) -> None:
        await self._cancelled(job_id)

    async def on_requeued(self, job_id: int) -> None:
        """The GPU running it went away (a Ray node or actor died): the row is queued again before the worker puts the
        job back at the head of its owner's turn (engine/worker.py), and its status line shows it waiting."""
        if await store_jobs.requeue(self.store, job_id):
            log.warning("job %d: the GPU running it went away; it waits at the head of its user's turn", job_id)
        self._emit(JobEvent(job_id, JobStatus.QUEUED, requeued=True))
