"""The web console's one coupling to the jobs service, the queue and the store.

A web job is an ordinary job: it goes through `JobService.submit` (the same prompt checks, per-user limits,
cooldown, queue caps and fair order as a Discord request), its row is in the same database and a worker runs it
on the same engine. What differs is who asked: a web login (or `local` when the console has no password), whose
jobs carry a user id of their own (`web_user_id`, negative: Discord's ids are positive) and source `web`.

The page follows a job through `WebJobs.run`, an async iterator of `JobEvent`s (queued position and ETA, step
progress, then finished/failed/cancelled), and reads its history with `WebJobs.history`; a job of anyone else (a
Discord user, another login) is "not found" here, so the console never shows other people's prompts.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator

from bot.job_types import JobEvent, NewRequest, remade, rerolled, varied
from db import jobs as store_jobs
from db.models import WEB
from engine.job_status import JobStatus
from engine.spec import JobSpec

if TYPE_CHECKING:
    from bot.service import JobService
    from db.records import JobRecord

log = logging.getLogger(__name__)

LOCAL_USER = "local"  # the login of a console without a password (it listens on this machine only)
HISTORY_SIZE = 24  # jobs in the console's history gallery


class NotThisConsoles(Exception):
    """The job does not exist or is not one of this login's web jobs. `str(err)` is for the user."""


def web_user_id(login: str) -> int:
    """The user id of a web login's jobs: the same across restarts, negative so that it is never a Discord user's
    (snowflakes are positive), within 56 bits."""
    digest = hashlib.sha256(f"fluxbot-web:{login}".encode()).digest()
    return -(int.from_bytes(digest[:7], "big") + 1)


@dataclass(frozen=True)
class JobUpdate:
    """What the page shows of a job at one moment. `state`: queued (position, eta_s, record: the row with its
    resolved seed), started, progress (step of total), done (record with the saved images), failed (message) or
    cancelled."""
    job_id: int
    state: str
    position: int | None = None
    eta_s: float | None = None
    step: int | None = None
    total: int | None = None
    message: str = ""
    record: "JobRecord | None" = None

    @property
    def final(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @classmethod
    def of(cls, event: JobEvent) -> "JobUpdate":
        """The jobs service's event in the page's words."""
        if event.status is JobStatus.RUNNING:
            state = "started" if event.step is None else "progress"
        else:
            state = str(event.status)
        return cls(event.job_id, state, position=event.position, eta_s=event.eta_s, step=event.step,
                   total=event.total, message=event.message, record=event.record)


@dataclass(frozen=True)
class WebUser:
    """Who uses the console: the login Gradio's password check let in, or `local`."""
    login: str

    @classmethod
    def of(cls, username: str | None) -> "WebUser":
        return cls(username or LOCAL_USER)

    @property
    def user_id(self) -> int:
        return web_user_id(self.login)


class WebJobs:
    """Submit, follow and list one login's web jobs, through the bot's jobs service."""

    def __init__(self, service: "JobService"):
        self.service = service

    # --- new jobs ---------------------------------------------------------------------------------------------

    async def run(self, user: WebUser, spec: JobSpec, *, kind: str = "imagine",
                  parent_id: int | None = None) -> AsyncIterator[JobUpdate]:
        """Submit a job and yield its updates until it ends: first `queued` with its position and ETA (and the row,
        with its resolved seed, in `record`), then what the workers report. An `AdmissionError` (a refusal, with
        the user's message) is raised before anything is yielded. The job goes on if the page goes away."""
        # 1. listen before submitting, so that no event of a fast job is missed
        events: asyncio.Queue[JobEvent] = asyncio.Queue()
        unsubscribe = self.service.subscribe(events.put_nowait)
        try:
            # 2. admission in this user's turn, like a Discord request
            async with self.service.user_turn(user.user_id):
                submitted = await self.service.submit(NewRequest(
                    user_id=user.user_id, spec=spec, kind=kind, parent_id=parent_id, source=WEB,
                    user_name=user.login))
            log.info("web job %d queued for %s", submitted.job_id, user.login)
            record = await store_jobs.get_job(self.service.store, submitted.job_id)
            yield JobUpdate(submitted.job_id, "queued", position=submitted.position, eta_s=submitted.eta_s,
                            record=record)
            # 3. this job's events, until it ends
            while True:
                event = await events.get()
                if event.job_id != submitted.job_id:
                    continue
                update = JobUpdate.of(event)
                yield update
                if update.final:
                    return
        finally:
            unsubscribe()

    # --- this login's jobs ----------------------------------------------------------------------------------------

    async def own_job(self, user: WebUser, job_id: int | float | None) -> "JobRecord":
        """One of this login's web jobs, or NotThisConsoles."""
        number = int(job_id) if job_id is not None and float(job_id).is_integer() else None
        if not number:  # an empty field (Gradio shows it as 0)
            raise NotThisConsoles("No job chosen: generate one first, or pick one in the history.")
        job = await store_jobs.get_job(self.service.store, number)
        if job is None or job.user_id != user.user_id:
            raise NotThisConsoles(f"Job #{job_id} is not one of this console's jobs.")
        return job

    async def history(self, user: WebUser, size: int = HISTORY_SIZE) -> list["JobRecord"]:
        """This login's jobs, newest first (the unfinished and failed ones too)."""
        page = await store_jobs.user_history(self.service.store, user.user_id, per_page=size)
        return page.items

    async def cancel(self, user: WebUser, job_id: int | float | None) -> str:
        """Cancel one of this login's jobs; the outcome in words."""
        job = await self.own_job(user, job_id)
        outcome = await self.service.cancel(job.id)
        return outcome.value


# --- what the buttons ask for: the same specs as Discord's buttons (bot/job_types.py) -------------------------

BUTTON_SPECS = {
    "reroll": rerolled,  # 🎲 the same request with a new random seed
    "vary": varied,  # 🔀 a subtle variation of the first image
    "show": remade,  # Reproduce: the very same spec (seed included) and engine recipe, so the same model makes the
                     # same pixels (where the engine can switch to that recipe: engine/recipe_switch.py)
}
