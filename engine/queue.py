"""The queue of jobs waiting for a worker: fair order, positions, ETAs, and listeners that learn when they change.

Pure asyncio, no torch: everything here runs on the event loop. The queue knows job ids, their `JobSpec`s and
who asked (an opaque owner key); admission limits, the database and Discord live elsewhere (`bot/service.py`).

Order: round-robin across owners, first come first served within an owner. Every job gets a *round* when it
is submitted: the round being served now (the round of the last job taken), or one past the round of its
owner's newest job still waiting or running, whichever is later. Waiting jobs are ordered by (round, arrival),
so an owner with three jobs waiting gets one per round while a newcomer's first job goes in the current round.
Positions and ETAs are read from that same order, and `take` hands out its head: what a user is told is the
order the workers follow (until newer jobs of other owners are put ahead in a later round's place). A job
without an owner (None) is ordered by arrival only.

Life of a job in the queue:
1. `submit(job_id, spec, owner=)` places it in the fair order and returns its 1-based position.
2. A worker's `take(max_images)` removes the head (and, with batching, later jobs of the same
   `batch_key()`, never ahead of an earlier waiting job of their own owner) and marks them running.
3. The worker reports `progress(job_id, step, total)` and at the end `finish(job_ids, seconds, ...)`, which
   teaches the ETA model how long such jobs take.
4. `remove(job_id)` takes a job out while it still waits (a user cancelled it).
5. `requeue(job_ids)` puts running jobs back, at the head of their owners' turns, when their engine went away
   (engine/worker.py on `EngineLost`: a Ray node or actor died); they run again from scratch.

Whenever a waiting job's position or ETA changes noticeably, every listener gets a `QueueEvent`.
"""
from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable

from engine.job_status import JobStatus
from engine.listeners import Listeners
from engine.spec import JobSpec

log = logging.getLogger(__name__)

# Progress reports re-estimate every waiting job's ETA at most this often (a step can take 10 ms).
PROGRESS_ANNOUNCE_S = 1.0


class QueueClosed(Exception):
    """The queue was closed; workers waiting in `take` stop."""


@dataclass(frozen=True)
class QueueEvent:
    """What a listener learns. `position` is 1-based among waiting jobs; `eta_s` is the estimated seconds
    until the job is done (the wait for the jobs ahead, shared among the workers, plus its own run)."""
    job_id: int
    status: JobStatus  # QUEUED: a waiting job's position and/or ETA (first announcement included); RUNNING: taken
    position: int | None = None
    eta_s: float | None = None
    worker: str = ""
    # RUNNING: the engine compiles the DiT's blocks for this job's shape first (engine/compile.py), so its steps have
    # not started and no step-based ETA holds; a second RUNNING event with False says the first step is done.
    warming_up: bool = False


@dataclass(frozen=True)
class QueuedJob:
    job_id: int
    spec: JobSpec
    submitted_at: float  # time.monotonic()
    owner: int | None = None  # who asked (a user id); None: ordered by arrival only
    round: int = 0  # the round-robin round it is served in (see the module's doc)
    seq: int = 0  # arrival order
    losses: int = 0  # how often the engine running it went away (`requeue`)

    @property
    def rank(self) -> tuple[int, int]:
        """Its place in the fair order: by round, then by arrival."""
        return (self.round, self.seq)


@dataclass
class _Running:
    job: QueuedJob
    worker: str
    started_at: float
    step: int = 0
    total: int = 0
    warming_up: bool = False   # the engine compiles for its shape (until its first step)
    warmed: bool = False       # it did: its time says nothing about the next job of its kind


Listener = Callable[[QueueEvent], object]


class EtaModel:
    """Seconds a job will take, learnt from the jobs that ran.

    1. Jobs of the same size, steps and image count: the mean of the last `window` of them.
    2. Otherwise: the mean seconds per "unit" (steps x megapixels x images) of the last `window` jobs.
    3. Before any job ran: `default_s_per_unit` (seconds per step of one 1024x1024 image).
    """

    def __init__(self, default_s_per_unit: float = 1.5, window: int = 20):
        self.default_s_per_unit = default_s_per_unit
        self.window = window
        self._by_key: dict[tuple, deque[float]] = {}
        self._per_unit: deque[float] = deque(maxlen=window)

    @staticmethod
    def _key(spec: JobSpec) -> tuple:
        return (spec.width, spec.height, spec.steps_run, spec.count)

    @staticmethod
    def _units(spec: JobSpec) -> float:
        # steps_run: an image input runs only its part of the steps (strength 0: none, only the VAE)
        return max(spec.steps_run, 0.25) * max(spec.width * spec.height, 1) / 1_048_576 * max(spec.count, 1)

    def estimate(self, spec: JobSpec) -> float:
        same = self._by_key.get(self._key(spec))
        if same:
            return sum(same) / len(same)
        if self._per_unit:
            return sum(self._per_unit) / len(self._per_unit) * self._units(spec)
        return self.default_s_per_unit * self._units(spec)

    def record(self, spec: JobSpec, seconds: float) -> None:
        if seconds < 0:
            return
        self._by_key.setdefault(self._key(spec), deque(maxlen=self.window)).append(seconds)
        self._per_unit.append(seconds / self._units(spec))


class JobQueue:
    """An asyncio queue of job ids shared by every worker, in fair order (round-robin across owners, FIFO
    within one). Use it from the event loop only."""

    def __init__(self, *, eta: EtaModel | None = None, workers: int = 1):
        self.eta = eta or EtaModel()
        self._workers = max(1, workers)
        self._waiting: dict[int, QueuedJob] = {}
        self._order: list[QueuedJob] = []  # the waiting jobs sorted by `rank`: the order workers take them in
        self._round = 0  # the round being served: the round of the last head taken
        self._arrivals = itertools.count()
        self._running: dict[int, _Running] = {}
        self._listeners: Listeners[QueueEvent] = Listeners("queue")
        self._announced: dict[int, tuple[int, float]] = {}
        self._changed = asyncio.Event()
        self._closed = False
        self._last_progress_announce = 0.0

    # --- what the service does -----------------------------------------------------------------------

    def submit(self, job_id: int, spec: JobSpec, *, owner: int | None = None) -> int:
        """Place a job in the fair order (`owner`: who asked; None = by arrival only); returns its 1-based
        position. A job id may be in the queue once."""
        if self._closed:
            raise QueueClosed("the queue is closed (the bot is shutting down)")
        if job_id in self._waiting or job_id in self._running:
            raise ValueError(f"job {job_id} is already in the queue")
        job = QueuedJob(job_id, spec, time.monotonic(), owner=owner, round=self._round_for(owner),
                        seq=next(self._arrivals))
        self._waiting[job_id] = job
        index = bisect.bisect_right(self._order, job.rank, key=lambda j: j.rank)
        self._order.insert(index, job)
        self._changed.set()
        self._announce()
        return index + 1

    def remove(self, job_id: int) -> bool:
        """Take a waiting job out (cancelled). False when it is not waiting (running, done or unknown). The
        owner's later jobs keep their rounds."""
        job = self._waiting.pop(job_id, None)
        if job is None:
            return False
        self._order.remove(job)
        self._announced.pop(job_id, None)
        self._announce()
        return True

    def position(self, job_id: int) -> int | None:
        """1-based position among waiting jobs, in the order workers take them; None when it is not waiting."""
        job = self._waiting.get(job_id)
        return None if job is None else self._order.index(job) + 1

    def eta_s(self, job_id: int) -> float | None:
        """Estimated seconds until the job is done; None when it is neither waiting nor running."""
        if job_id in self._running:
            return self._remaining(self._running[job_id])
        return self._etas().get(job_id, (None, None))[1]

    def __len__(self) -> int:
        """Jobs waiting (not running)."""
        return len(self._waiting)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._waiting or job_id in self._running

    def waiting(self) -> list[QueuedJob]:
        """The waiting jobs in the order workers take them."""
        return list(self._order)

    def running(self) -> dict[int, str]:
        """Running job id -> name of the worker running it."""
        return {jid: r.worker for jid, r in self._running.items()}

    def is_running(self, job_id: int) -> bool:
        return job_id in self._running

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(event)` on the event loop for every QueueEvent; returns the unsubscribe function.
        A listener may be a coroutine function (it then runs as a task); it must not block."""
        return self._listeners.subscribe(listener)

    def set_workers(self, count: int) -> None:
        """How many workers share the queue (the wait for the jobs ahead is divided among them)."""
        self._workers = max(1, count)
        self._announce()

    def close(self) -> None:
        """Stop handing out jobs: workers waiting in `take` get QueueClosed. Waiting jobs stay listed."""
        self._closed = True
        self._changed.set()

    # --- what the workers do -------------------------------------------------------------------------

    async def take(self, max_images: int = 1, *, worker: str = "") -> list[QueuedJob]:
        """Wait for the head job and take it, plus later jobs with the same `batch_key()` while the images
        stay within `max_images`. The head is always taken, even when its own count is larger."""
        while not self._waiting:
            if self._closed:
                raise QueueClosed("the queue is closed")
            self._changed.clear()
            await self._changed.wait()
        if self._closed:
            raise QueueClosed("the queue is closed")
        batch = self._pick_batch(max_images)
        self._round = batch[0].round
        now = time.monotonic()
        for job in batch:
            del self._waiting[job.job_id]
            self._order.remove(job)
            self._announced.pop(job.job_id, None)
            self._running[job.job_id] = _Running(job, worker, now)
            self._emit(QueueEvent(job.job_id, JobStatus.RUNNING, worker=worker))
        self._announce()
        return batch

    def warm_up(self, job_ids: list[int], on: bool) -> None:
        """Running jobs whose engine compiles for their shape first (`on`), or is done with it: listeners hear it
        (a RUNNING QueueEvent with `warming_up`), and the ETA model does not learn from a batch that warmed up
        (the compile is not what the next job of that kind will take)."""
        for jid in job_ids:
            run = self._running.get(jid)
            if run is None or run.warming_up == on:
                continue
            run.warming_up = on
            run.warmed = run.warmed or on
            self._emit(QueueEvent(jid, JobStatus.RUNNING, worker=run.worker, warming_up=on))

    def is_warming_up(self, job_id: int) -> bool:
        run = self._running.get(job_id)
        return run is not None and run.warming_up

    def progress(self, job_id: int, step: int, total: int) -> None:
        """A running job finished `step` of `total` steps (keeps the ETAs of the jobs behind it honest)."""
        run = self._running.get(job_id)
        if run is None:
            return
        if run.warming_up:      # the first step ran: compiled
            self.warm_up([job_id], False)
        run.step, run.total = step, total
        now = time.monotonic()
        if now - self._last_progress_announce >= PROGRESS_ANNOUNCE_S or step == total:
            self._last_progress_announce = now
            self._announce()

    def finish(self, job_ids: list[int], seconds: float, *, learn: bool = True) -> None:
        """The jobs left their worker after `seconds` (together, as one batch). `learn=False` for failed
        or cancelled jobs, whose time says nothing about the next job."""
        runs = [self._running.pop(jid) for jid in job_ids if jid in self._running]
        if learn and runs and not any(run.warmed for run in runs):
            share = seconds / len(runs)
            for run in runs:
                self.eta.record(run.job.spec, share)
        self._announce()

    def requeue(self, job_ids: list[int]) -> None:
        """Running jobs whose engine went away (a Ray node or actor died) wait again, at the head of their owners'
        turns: each keeps its round and arrival, so it goes ahead of its owner's later jobs and of every job that
        came after it in its round. Unknown or not running ids are ignored."""
        for jid in job_ids:
            run = self._running.pop(jid, None)
            if run is None:
                continue
            job = replace(run.job, losses=run.job.losses + 1)
            self._waiting[jid] = job
            bisect.insort(self._order, job, key=lambda j: j.rank)
        self._changed.set()
        self._announce()

    # --- inside ----------------------------------------------------------------------------------------

    def _round_for(self, owner: int | None) -> int:
        """The round of a new job: the current one, or one past the owner's newest job still in the queue."""
        if owner is None:
            return self._round
        rounds = [j.round for j in self._waiting.values() if j.owner == owner]
        rounds += [r.job.round for r in self._running.values() if r.job.owner == owner]
        return max(self._round, max(rounds) + 1) if rounds else self._round

    def _pick_batch(self, max_images: int) -> list[QueuedJob]:
        """The head, plus later jobs of its `batch_key()` within `max_images`; a job never joins ahead of an
        earlier waiting job of its own owner (first come, first served within an owner)."""
        jobs = iter(self._order)
        head = next(jobs)
        batch, images = [head], max(head.spec.count, 1)
        key = head.spec.batch_key()
        left_behind: set[int] = set()  # owners with a job waiting that this batch skipped
        for job in jobs:
            if images >= max_images:
                break
            fits = job.spec.batch_key() == key and images + max(job.spec.count, 1) <= max_images
            if fits and job.owner not in left_behind:
                batch.append(job)
                images += max(job.spec.count, 1)
            elif job.owner is not None:
                left_behind.add(job.owner)
        return batch

    def _remaining(self, run: _Running) -> float:
        estimate = self.eta.estimate(run.job.spec)
        if run.total:
            return max(0.0, estimate * (1 - run.step / run.total))
        return max(0.0, estimate - (time.monotonic() - run.started_at))

    def _etas(self) -> dict[int, tuple[int, float]]:
        """job id -> (position, eta seconds) for every waiting job."""
        ahead = sum(self._remaining(r) for r in self._running.values())
        out = {}
        for pos, job in enumerate(self._order, start=1):
            own = self.eta.estimate(job.spec)
            out[job.job_id] = (pos, ahead / self._workers + own)
            ahead += own
        return out

    def _announce(self) -> None:
        """Tell the listeners about every waiting job whose position changed or whose ETA moved by more
        than 2 s and 10 %."""
        if not self._listeners:
            return
        for jid, (pos, eta) in self._etas().items():
            last = self._announced.get(jid)
            if last is not None and last[0] == pos and abs(eta - last[1]) < max(2.0, 0.1 * last[1]):
                continue
            self._announced[jid] = (pos, eta)
            self._emit(QueueEvent(jid, JobStatus.QUEUED, position=pos, eta_s=eta))

    def _emit(self, event: QueueEvent) -> None:
        self._listeners.emit(event)
