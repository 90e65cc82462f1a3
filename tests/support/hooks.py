"""`Recorder`: WorkerHooks (engine/worker.py) that write down what a worker tells its owner, in order."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from engine.spec import Result

OUTCOMES = ("finished", "failed", "cancelled")


@dataclass
class Recorder:
    """Every hook call as a tuple in `log`: ("started", id), ("progress", id, step, total), ("finished", id),
    ("failed", id, message), ("cancelled", id), ("requeued", id). `done` is set once `expect` jobs have an
    outcome."""
    log: list[tuple] = field(default_factory=list)
    results: dict[int, Result] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    expect: int = 0

    async def on_started(self, job_id):
        self.log.append(("started", job_id))

    def on_progress(self, job_id, step, total):
        self.log.append(("progress", job_id, step, total))

    async def on_finished(self, job_id, result):
        self.results[job_id] = result
        self._end(("finished", job_id))

    async def on_failed(self, job_id, message):
        self._end(("failed", job_id, message))

    async def on_cancelled(self, job_id):
        self._end(("cancelled", job_id))

    async def on_requeued(self, job_id):
        self.log.append(("requeued", job_id))

    def _end(self, entry):
        self.log.append(entry)
        if len(self.outcomes()) >= self.expect:
            self.done.set()

    def outcomes(self) -> list[tuple]:
        """The outcomes in the order they came."""
        return [e for e in self.log if e[0] in OUTCOMES]

    def by_job(self) -> dict[int, tuple]:
        """Each job's outcome, by job id."""
        return {e[1]: e for e in self.outcomes()}

    def kinds(self, job_id) -> list[str]:
        """What the worker said about one job, in order: ["started", "progress", ..., "finished"]."""
        return [e[0] for e in self.log if e[1] == job_id]
