"""The one vocabulary of a job's status, shared by the store (db), the queue (engine.queue) and the bot.

A job moves queued → running → done | failed | cancelled; running → queued when the bot restarts. The values are
the strings stored in the `jobs.status` column (a `StrEnum` compares equal to them, so rows written before this
enum existed read back unchanged).

Why here: `engine` is the layer everything else stands on (the queue lives in it and must never import `db`), and
this module imports nothing, so `db` may import it without pulling in torch or anything of the engine. Nothing else
of the project defines status names.
"""
from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    QUEUED = "queued"        # waiting for a worker (and what the queue announces: position, ETA)
    RUNNING = "running"      # a worker took it (the queue's and the worker's events; the row while it runs)
    DONE = "done"            # its images are saved and recorded
    FAILED = "failed"        # it ended with an error (the row's `error` says which)
    CANCELLED = "cancelled"  # a user or an admin cancelled it

    @property
    def finished(self) -> bool:
        return self in FINISHED


UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)
FINISHED = (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)
