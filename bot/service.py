"""The jobs service: the one place that talks to both the store and the queue.

Cogs call `submit`, `cancel`, `regenerate` and `recover`; the workers call the `WorkerHooks` methods
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
import enum
import logging
import re
import unicodedata
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterator

from db import jobs as store_jobs
from db.errors import is_store_busy
from db.guard import DatabaseGone
from db.models import RUNNING
from db.records import ImageFile, JobOutput, JobRecord, NewJob
from engine import limits as job_limits  # the shared limits and checks
from engine.image_files import IdMark, image_names
from engine.listeners import Listeners
from engine.png import image_params, save_png
from engine.queue import QUEUED, JobQueue, QueueClosed, QueueEvent
from engine.spec import JobSpec, Result

if TYPE_CHECKING:
    from bot.config import LimitsSettings
    from db.session import Store
    from engine.worker import Worker

log = logging.getLogger(__name__)


# --- refusals ------------------------------------------------------------------------------------------------

class AdmissionError(Exception):
    """A request was refused before anything was queued; `str(err)` is meant for the user."""


class EmptyPrompt(AdmissionError):
    pass


class PromptTooLong(AdmissionError):
    pass


class BannedWord(AdmissionError):
    def __init__(self, message: str, word: str):
        super().__init__(message)
        self.word = word


class TooManyImages(AdmissionError):
    pass


class JobTooCostly(AdmissionError):
    pass


class TooManyUnfinished(AdmissionError):
    pass


class CoolingDown(AdmissionError):
    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFull(AdmissionError):
    pass


class GuildQueueFull(AdmissionError):
    pass


class JobNotFound(AdmissionError):
    pass


class ShuttingDown(AdmissionError):
    pass


class StoreGone(AdmissionError):
    """The database file was deleted or replaced while the bot ran (db.guard)."""


# --- banned words --------------------------------------------------------------------------------------------

# Letters from other scripts that look like Latin ones, and the usual digit/symbol stand-ins.
_LOOKALIKES = str.maketrans({
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "һ": "h", "ӏ": "l",
    "ԛ": "q", "ԝ": "w",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "ϲ": "c", "ѵ": "v",
    # small capitals (NFKC keeps them)
    "ᴀ": "a", "ʙ": "b", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ꜰ": "f", "ɢ": "g", "ʜ": "h", "ɪ": "i", "ᴊ": "j",
    "ᴋ": "k", "ʟ": "l", "ᴍ": "m", "ɴ": "n", "ᴏ": "o", "ᴘ": "p", "ꞯ": "q", "ʀ": "r", "ꜱ": "s", "ᴛ": "t",
    "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ʏ": "y", "ᴢ": "z",
    # Latin look-alikes NFKC keeps
    "ı": "i", "ɡ": "g", "ɑ": "a", "ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "đ": "d",
    # digits and symbols used for letters
    "0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s",
    # l and i look alike: fold both to i
    "l": "i",
})
_WORD = re.compile(r"\w+")


def fold_text(text: str) -> str:
    """The comparison form of a text: NFKC, no invisible characters, no accents, case-folded, look-alike
    letters folded to one Latin letter."""
    # 1. compatibility forms (full-width, ligatures, math letters) become plain letters
    text = unicodedata.normalize("NFKC", text)
    # 2. invisible format characters (zero-width space/joiner, soft hyphen) disappear
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    # 3. accents come off
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    # 4. case, then look-alikes (after casefold, so that upper-case look-alikes are caught too)
    return text.casefold().translate(_LOOKALIKES)


def fold_words(text: str) -> list[str]:
    """The words of a text in comparison form. Runs of single letters ("a n u d e", "n.u.d.e") also give
    every word they spell ("an", "nud", "nude", …), so spacing a word out does not hide it."""
    words = _WORD.findall(fold_text(text))
    out = list(words)
    run: list[str] = []
    for w in words + [""]:
        if len(w) == 1:
            run.append(w)
            continue
        if len(run) > 1:
            out.extend(_spelled(run))
        run = []
    return out


def _spelled(letters: list[str], longest: int = 40) -> list[str]:
    """Every join of two or more consecutive letters (only the whole run when it is very long)."""
    if len(letters) > longest:
        return ["".join(letters)]
    return ["".join(letters[i:j]) for i in range(len(letters)) for j in range(i + 2, len(letters) + 1)]


def _inflections(word: str) -> set[str]:
    """A banned word and its plural forms ("frog" → frogs; "kiss" → kisses); not prefixes, which would ban
    innocent words ("ass" in "assistant")."""
    return {word, word + "s", word + "es"}


class BannedWords:
    """Whole-word (or whole-phrase) matching of `[discord] banned_words` against prompts."""

    def __init__(self, words: list[str]):
        self._phrases: list[tuple[tuple[str, ...], str]] = []
        for entry in words:
            folded = tuple(_WORD.findall(fold_text(entry)))
            if folded:
                self._phrases.append((folded, entry))
            else:
                log.warning("banned word %r has no letters or digits; it is ignored", entry)

    def find(self, prompt: str) -> str | None:
        """The first configured entry the prompt contains, or None."""
        if not self._phrases:
            return None
        words = fold_words(prompt)
        joined = " " + " ".join(words) + " "
        for phrase, entry in self._phrases:
            if len(phrase) == 1:
                if not _inflections(phrase[0]).isdisjoint(words):
                    return entry
            elif " " + " ".join(phrase) + " " in joined:
                return entry
        return None


# --- one user's requests in arrival order ---------------------------------------------------------------------

class UserTurns:
    """One lock per user, so that a user's requests are admitted in the order they reached the bot.

    A request takes its user's turn before its first real `await` (reading a parent job, the admission): asyncio
    locks wake waiters first come, first served, and discord.py starts one task per interaction in the order the
    gateway delivered them, so a 🎲 that reads its parent first can no longer be overtaken by an /imagine of the
    same user sent a few ms later. Locks exist only while someone holds or waits for them."""

    def __init__(self) -> None:
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}  # user id -> (lock, holders and waiters)

    @asynccontextmanager
    async def turn(self, user_id: int) -> AsyncIterator[None]:
        # 1. This user's lock, counted as wanted by one more request.
        lock, wanting = self._locks.get(user_id, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[user_id] = (lock, wanting + 1)
        try:
            # 2. Wait for the user's earlier requests (none is the usual case: no wait, no yield).
            async with lock:
                yield
        finally:
            # 3. Drop the lock with its last user.
            lock, wanting = self._locks[user_id]
            if wanting <= 1:
                del self._locks[user_id]
            else:
                self._locks[user_id] = (lock, wanting - 1)

    def __len__(self) -> int:
        return len(self._locks)


# --- what goes in and out --------------------------------------------------------------------------------------

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
    NOT_YOURS = "not yours"
    NOT_FOUND = "not found"


# JobEvent kinds
STARTED, PROGRESS, FINISHED, FAILED, CANCELLED = "started", "progress", "finished", "failed", "cancelled"


@dataclass(frozen=True)
class JobEvent:
    """What the bot hears about a job. `queued`: position/eta_s; `progress`: step/total; `finished`: record
    (with the saved images); `failed`: message; `cancelled`, `started`: the kind says it all."""
    job_id: int
    kind: str
    position: int | None = None
    eta_s: float | None = None
    step: int | None = None
    total: int | None = None
    message: str = ""
    record: JobRecord | None = None


Listener = Callable[[JobEvent], Any]


def spec_of(job: JobRecord) -> JobSpec:
    """The spec that reproduces a stored job."""
    return JobSpec(prompt=job.prompt, seed=job.seed, steps=job.steps, width=job.width, height=job.height,
                   guidance=job.guidance, variation_seed=job.variation_seed,
                   variation_strength=job.variation_strength, count=job.count)


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
        if event.kind == QUEUED:
            self._emit(JobEvent(event.job_id, QUEUED, position=event.position, eta_s=event.eta_s))

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
                await self._check_guild(request.guild_id)
                if len(self.queue) >= self.limits.queue_cap:
                    raise QueueFull(f"The queue is full ({len(self.queue)} jobs waiting); try again in a few "
                                    f"minutes.")
            # 4. the row first, then the queue
            record = await store_jobs.create_job(self.store, NewJob(
                user_id=request.user_id, prompt=spec.prompt, seed=spec.seed, steps=spec.steps, width=spec.width,
                height=spec.height, guidance=spec.guidance, count=spec.count, guild_id=request.guild_id,
                channel_id=request.channel_id, variation_seed=spec.variation_seed,
                variation_strength=spec.variation_strength, parent_id=request.parent_id, kind=request.kind,
                model_id=self.model_id, interaction_id=request.interaction_id,
                interaction_token=request.interaction_token, interaction_created_at=request.interaction_created_at,
                status_message_id=request.status_message_id))
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

    async def _check_guild(self, guild_id: int | None) -> None:
        limit = self.limits.max_unfinished_per_guild
        if limit <= 0:
            return
        unfinished = await store_jobs.count_unfinished_in_guild(self.store, guild_id)
        if unfinished >= limit:
            where = "Direct messages with this bot have" if guild_id is None else "This server has"
            raise GuildQueueFull(f"{where} {unfinished} unfinished job(s) already (the limit is {limit}); try "
                                 f"again when some have finished.")

    async def regenerate(self, job_id: int, *, user_id: int, exempt: bool = False, **where: Any) -> Submitted:
        """/show of a job whose PNG was pruned: a new job of kind `show` with the parent's exact spec (same
        seed, so the same pixels on the same model). `where` may carry guild_id, channel_id, interaction_*."""
        parent = await store_jobs.get_job(self.store, job_id)
        if parent is None:
            raise JobNotFound(f"There is no job {job_id}.")
        return await self.submit(NewRequest(user_id=user_id, spec=spec_of(parent), kind="show", parent_id=job_id,
                                            exempt=exempt, **where))

    def where(self, job_id: int) -> JobEvent | None:
        """Where a job is now: `queued` with position and ETA, `started` with the ETA of what is left, or
        None when it is neither waiting nor running (finished, or unknown to this process)."""
        if self.queue.is_running(job_id):
            return JobEvent(job_id, STARTED, eta_s=self.queue.eta_s(job_id))
        position = self.queue.position(job_id)
        if position is None:
            return None
        return JobEvent(job_id, QUEUED, position=position, eta_s=self.queue.eta_s(job_id))

    # --- cancel ---------------------------------------------------------------------------------------------

    async def cancel(self, job_id: int, by_user_id: int, is_admin: bool = False) -> CancelOutcome:
        """Cancel a job: a waiting one leaves the queue at once, a running one stops at its next step."""
        # 1. who may
        job = await store_jobs.get_job(self.store, job_id)
        if job is None:
            return CancelOutcome.NOT_FOUND
        if job.user_id != by_user_id and not is_admin:
            return CancelOutcome.NOT_YOURS
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
            self._emit(JobEvent(job_id, CANCELLED, record=await store_jobs.get_job(self.store, job_id)))

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
            if job.status == RUNNING:
                await store_jobs.requeue(self.store, job.id)
            self.queue.submit(job.id, spec_of(job), owner=job.user_id)
            recovered.append(job)
        if recovered:
            log.info("recovered %d unfinished job(s): %s", len(recovered), [j.id for j in recovered])
        return recovered

    # --- worker hooks ------------------------------------------------------------------------------------------

    async def on_started(self, job_id: int) -> None:
        if not await store_jobs.mark_running(self.store, job_id):
            log.warning("job %d started but its row was not queued (cancelled meanwhile?)", job_id)
        self._emit(JobEvent(job_id, STARTED))

    def on_progress(self, job_id: int, step: int, total: int) -> None:
        self._emit(JobEvent(job_id, PROGRESS, step=step, total=total))

    async def on_finished(self, job_id: int, result: Result) -> None:
        # 1. the PNGs, off the event loop (encoding and writing take tens of ms)
        try:
            images = await asyncio.to_thread(self._write_pngs, job_id, result)
        except OSError as e:
            log.error("job %d: saving its images failed: %s", job_id, e)
            await self.on_failed(job_id, f"The image was made but could not be saved ({e.strerror or e}); "
                                         f"the bot's owner should check the disk.")
            return
        # 2. the row
        output = JobOutput(seeds=list(result.seeds), images=images, timings=dict(result.timings),
                           precision=result.precision, profile=result.profile, model_id=result.model_id)
        if not await self._while_busy(f"job {job_id}: recording its result",
                                      lambda: store_jobs.finish_job(self.store, job_id, output)):
            log.warning("job %d finished but its row was already final; result not recorded", job_id)
            return
        # 3. the bot
        record = await store_jobs.get_job(self.store, job_id)
        log.info("job %d done in %.1f s", job_id, result.timings.get("total", 0.0))
        self._emit(JobEvent(job_id, FINISHED, record=record))

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
            self._emit(JobEvent(job_id, FAILED, message=message,
                                record=await store_jobs.get_job(self.store, job_id)))

    async def on_cancelled(self, job_id: int) -> None:
        await self._cancelled(job_id)

    def _write_pngs(self, job_id: int, result: Result) -> list[ImageFile]:
        """Save each image as <images_dir>/<identity>-<job_id>[_<i>].png with its recipe (engine.image_files);
        return paths and SHA-256s, and remember the job id in the folder's mark."""
        files = []
        for i, name in enumerate(image_names(job_id, len(result.images), self.identity)):
            path = self.images_dir / name
            digest = save_png(result.images[i], path, {**image_params(result, i), "job_id": job_id})
            files.append(ImageFile(path=str(path), sha256=digest))
        if self.identity:
            try:
                self.id_mark.note(self.identity, job_id)
            except OSError as e:  # the images are saved; only the guard against a restored backup is weaker
                log.warning("job %d: cannot update %s (%s)", job_id, self.id_mark.path, e.strerror or e)
        return files
