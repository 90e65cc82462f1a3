"""GPU workers: one per device, each with its own Engine, all taking jobs from the one `JobQueue`
(started by engine/pool.py's `WorkerPool`).

A worker runs its engine on a dedicated single-thread executor, so the event loop never blocks and every
call into one engine (load, generate, set_profile, close) happens on the same thread. Progress crosses back
with `loop.call_soon_threadsafe`; outcomes are reported through `WorkerHooks` on the event loop.

Faults never stop a worker: an engine exception fails that job with its message; `EngineOutOfMemory`
moves the engine to the suggested leaner profile and retries once; a batch that fails is retried one job
at a time, so one bad job does not fail the others. `EngineLost` (the engine's device went away: a Ray
actor or its node died) fails nothing: the jobs go back to the queue at the head of their owners' turns
(`JobQueue.requeue`; a job lost `MAX_LOSSES` times fails), then the worker waits for its engine to come
back (`engine.reconnect(should_stop)`: a restarted actor reloads its model) or ends when it is gone for
good (its node left the cluster); the pool that started it notices.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from engine.engine_process import choose_loader
from engine.errors import EngineError, EngineLost, EngineOutOfMemory
from engine.queue import JobQueue, QueueClosed, QueuedJob
from engine.spec import Result

if TYPE_CHECKING:
    from engine.settings import EngineSettings

log = logging.getLogger(__name__)

# A job whose engine went away this many times fails instead of going back to the queue (a job that crashes
# every GPU it runs on must not take the cluster down one actor after another).
MAX_LOSSES = 3


class WorkerHooks(Protocol):
    """What a worker tells its owner (the jobs service). Every method runs on the event loop; the async
    ones are awaited in order, so a job's `on_started` comes before its outcome. `on_progress` is a plain
    function called once per denoising step: it must not block."""

    async def on_started(self, job_id: int) -> None: ...

    def on_progress(self, job_id: int, step: int, total: int) -> None: ...

    async def on_finished(self, job_id: int, result: Result) -> None: ...

    async def on_failed(self, job_id: int, message: str) -> None: ...

    async def on_cancelled(self, job_id: int) -> None: ...

    async def on_requeued(self, job_id: int) -> None:
        """The job's engine went away mid-job: the job waits in the queue again and will start again."""


@dataclass
class _Outcome:
    """What happened to the jobs of one batch: results by job id, or an error message."""
    results: dict[int, Result] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)


class Worker:
    """Takes batches off the queue and runs them on its engine until stopped."""

    def __init__(self, name: str, engine: Any, queue: JobQueue, hooks: WorkerHooks, *, max_batch: int = 1,
                 executor: concurrent.futures.ThreadPoolExecutor | None = None):
        self.name = name
        self.engine = engine
        self.queue = queue
        self.hooks = hooks
        self.max_batch = max(1, max_batch)
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"fluxbot-{name}")
        self._cancel_flags: dict[int, threading.Event] = {}
        self._stopping = threading.Event()
        self._task: asyncio.Task | None = None
        self.jobs_done = 0

    @classmethod
    async def load(cls, name: str, settings: "EngineSettings", device: str, queue: JobQueue, hooks: WorkerHooks,
                   *, loader: Callable[[Any, str], Any] | str | None = None) -> "Worker":
        """Load an Engine for `device` on the worker's own thread (minutes for a real model) and return the
        worker, not yet started. `loader(settings, device)` defaults to `Engine.load`; a "module:function"
        string names one. With `[engine] engine_process` "always" (or "auto" and more than one CUDA device)
        the engine runs in a child process (engine/engine_process.py); a loader given as a Python object
        always runs in this process. Load errors are raised here either way."""
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"fluxbot-{name}")
        loop = asyncio.get_running_loop()
        try:
            load = await loop.run_in_executor(executor, choose_loader, name, settings, loader)
            engine = await loop.run_in_executor(executor, load, settings, device)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        log.info("worker %s: engine ready on %s (profile %s%s)", name, device, getattr(engine, "profile", "?"),
                 ", in its own process" if getattr(engine, "pid", None) else "")
        return cls(name, engine, queue, hooks, max_batch=settings.max_batch, executor=executor)

    # --- control --------------------------------------------------------------------------------------

    def start(self) -> asyncio.Task:
        """Start taking jobs (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"worker-{self.name}")
        return self._task

    def running_jobs(self) -> list[int]:
        return list(self._cancel_flags)

    def cancel(self, job_id: int) -> bool:
        """Ask a running job to stop at its next step. False when this worker is not running it."""
        flag = self._cancel_flags.get(job_id)
        if flag is None:
            return False
        flag.set()
        log.info("worker %s: job %s will stop at its next step", self.name, job_id)
        return True

    async def stop(self, *, close_engine: bool = True) -> None:
        """Stop taking jobs, stop the running batch at its next step, close the engine (unless told not to).
        The running jobs get no outcome: the store still shows them running; restart recovery reruns them."""
        self._stopping.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        loop = asyncio.get_running_loop()
        close = getattr(self.engine, "close", None) if close_engine else None
        if close is not None:  # queued behind the stopping batch on the same thread
            try:
                await loop.run_in_executor(self._executor, close)
            except Exception:
                log.exception("worker %s: closing the engine failed", self.name)
        else:  # wait for the stopping batch to leave the engine's thread
            await loop.run_in_executor(self._executor, lambda: None)
        self._executor.shutdown(wait=False)

    # --- the loop -------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Take a batch, run it, report it; forever, until the queue closes or the task is cancelled."""
        log.info("worker %s: taking jobs (max batch %d images)", self.name, self.max_batch)
        while True:
            try:
                batch = await self.queue.take(self.max_batch, worker=self.name)
            except QueueClosed:
                log.info("worker %s: queue closed, stopping", self.name)
                return
            try:
                await self.run_batch(batch)
            except asyncio.CancelledError:
                raise
            except EngineLost as lost:  # the jobs are back in the queue; is the engine coming back?
                if not await self._engine_back(lost):
                    return
            except Exception:  # a bug in our own code: log it, keep serving the others
                log.exception("worker %s: unexpected error around jobs %s", self.name, [j.job_id for j in batch])

    async def run_batch(self, batch: list[QueuedJob]) -> None:
        """Run one batch and report every job's outcome."""
        ids = [j.job_id for j in batch]
        # 1. Cancel flags first, so that a cancel arriving during on_started is not lost.
        for jid in ids:
            self._cancel_flags[jid] = threading.Event()
        started = time.monotonic()
        outcome = _Outcome()
        try:
            # 2. Tell the owner the jobs started.
            for jid in ids:
                await self._call(self.hooks.on_started, jid)
            # 3. Run them on the engine's thread (OOM retry and one-by-one fallback inside).
            outcome = await self._generate(batch)
        except asyncio.CancelledError:  # stop(): no outcome; the store keeps them running for recovery
            self.queue.finish(ids, 0.0, learn=False)
            raise
        except EngineLost:
            await self._requeue(batch, {jid: self._cancel_flags[jid] for jid in ids})
            raise
        finally:
            flags = {jid: self._cancel_flags.pop(jid) for jid in ids}
        seconds = time.monotonic() - started
        # 4. Report each job: cancelled beats finished (a cancelled member of a batch loses its images).
        clean = True
        for jid in ids:
            result = outcome.results.get(jid)
            if flags[jid].is_set() or (result is not None and result.cancelled):
                clean = False
                await self._call(self.hooks.on_cancelled, jid)
            elif result is not None:
                self.jobs_done += 1
                await self._call(self.hooks.on_finished, jid, result)
            else:
                clean = False
                await self._call(self.hooks.on_failed, jid, outcome.errors.get(jid, "the job produced no result"))
        # 5. Teach the queue how long this kind of batch takes (only from clean runs).
        self.queue.finish(ids, seconds, learn=clean)

    async def _requeue(self, batch: list[QueuedJob], flags: dict[int, threading.Event]) -> None:
        """The engine went away mid-batch: each job waits again at the head of its owner's turn, unless it was
        cancelled (cancelled) or has now been lost `MAX_LOSSES` times (failed). The owner hears of a job before it
        goes back to the queue (its record says queued before another worker may take it); a cancel arriving
        meanwhile still reaches this worker's flag."""
        for job in batch:
            jid = job.job_id
            if not flags[jid].is_set() and job.losses + 1 >= MAX_LOSSES:
                self.queue.finish([jid], 0.0, learn=False)
                await self._call(self.hooks.on_failed, jid, f"the GPU running this job stopped {MAX_LOSSES} times "
                                                            f"while running it; the bot's owner should check the log")
                continue
            if not flags[jid].is_set():
                log.warning("worker %s: its engine went away during job %s; the job waits again", self.name, jid)
                await self._call(self.hooks.on_requeued, jid)
            if flags[jid].is_set():
                self.queue.finish([jid], 0.0, learn=False)
                await self._call(self.hooks.on_cancelled, jid)
            else:
                self.queue.requeue([jid])

    async def _engine_back(self, lost: EngineLost) -> bool:
        """After `EngineLost`: wait on the engine's thread until it is back (True) or gone for good (False, the
        worker ends). An engine without `reconnect(should_stop)` is gone for good."""
        reconnect = getattr(self.engine, "reconnect", None)
        back = reconnect is not None and await asyncio.get_running_loop().run_in_executor(
            self._executor, reconnect, self._stopping.is_set)
        if back:
            log.info("worker %s: its engine is back (%s); taking jobs again", self.name, lost)
        else:
            log.warning("worker %s: its engine is gone (%s); this worker stops", self.name, lost)
        return bool(back)

    async def _generate(self, batch: list[QueuedJob]) -> _Outcome:
        ids = [j.job_id for j in batch]
        try:
            results = await self._on_engine_thread(batch)
            return _Outcome(results=dict(zip(ids, results)))
        except EngineLost:
            raise
        except Exception as err:
            if len(batch) == 1:
                return _Outcome(errors={ids[0]: self._describe(err, ids)})
            log.warning("worker %s: batch %s failed (%s); running its jobs one at a time", self.name, ids, err)
        outcome = _Outcome()
        for job in batch:
            try:
                (outcome.results[job.job_id],) = await self._on_engine_thread([job])
            except EngineLost:
                raise
            except Exception as err:
                outcome.errors[job.job_id] = self._describe(err, [job.job_id])
        return outcome

    async def _on_engine_thread(self, batch: list[QueuedJob]) -> list[Result]:
        """generate / generate_batch on the worker's thread; on OOM, one retry on the leaner profile."""
        try:
            return await self._engine_call(batch)
        except EngineOutOfMemory as oom:
            if not oom.suggested_profile:
                raise
            log.warning("worker %s: out of memory on profile %s; retrying jobs %s on %s", self.name,
                        oom.profile, [j.job_id for j in batch], oom.suggested_profile)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self.engine.set_profile, oom.suggested_profile)
            return await self._engine_call(batch)

    async def _engine_call(self, batch: list[QueuedJob]) -> list[Result]:
        loop = asyncio.get_running_loop()
        ids = [j.job_id for j in batch]
        flags = [self._cancel_flags[jid] for jid in ids]

        def progress(step: int, total: int) -> None:  # engine thread
            loop.call_soon_threadsafe(self._progress, ids, step, total)

        def should_cancel() -> bool:  # engine thread; a batch stops only when all its jobs are cancelled
            return self._stopping.is_set() or all(f.is_set() for f in flags)

        # A shape the engine has not compiled yet compiles during the first step: the queue says "warming up".
        needs_warm_up = getattr(self.engine, "needs_warm_up", None)
        if needs_warm_up is not None and needs_warm_up(batch[0].spec, sum(max(j.spec.count, 1) for j in batch)):
            self.queue.warm_up(ids, True)

        def call() -> list[Result]:
            if len(batch) == 1:
                return [self.engine.generate(batch[0].spec, progress=progress, should_cancel=should_cancel)]
            return list(self.engine.generate_batch([j.spec for j in batch], progress=progress,
                                                   should_cancel=should_cancel))

        results = await loop.run_in_executor(self._executor, call)
        if len(results) != len(batch):
            raise EngineError(f"the engine returned {len(results)} results for {len(batch)} jobs")
        return results

    def _progress(self, ids: list[int], step: int, total: int) -> None:  # event loop
        for jid in ids:
            self.queue.progress(jid, step, total)
            try:
                self.hooks.on_progress(jid, step, total)
            except Exception:
                log.exception("worker %s: on_progress hook failed for job %s", self.name, jid)

    def _describe(self, err: Exception, ids: list[int]) -> str:
        """The message a user sees for a failed job; the traceback goes to the log."""
        if isinstance(err, EngineError):
            log.warning("worker %s: jobs %s failed: %s", self.name, ids, err)
            return str(err)
        log.error("worker %s: jobs %s failed with an unexpected error", self.name, ids, exc_info=err)
        return f"the engine failed ({type(err).__name__}: {err}); the bot's log has the details"

    async def _call(self, hook: Callable, *args: Any) -> None:
        """Await a hook; a failing hook is logged and does not stop the worker."""
        try:
            await hook(*args)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker %s: hook %s failed for %s", self.name, getattr(hook, "__name__", hook), args)
