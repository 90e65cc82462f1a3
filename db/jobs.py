"""Queries on jobs, named for what the bot does with them. All take the `Store` and return plain records.

Every state change is one transaction with a guarded UPDATE (`WHERE status IN (...)`) and returns whether it
changed the row, so a finished job is never overwritten by a late failure or cancel, and two callers racing
for the same job cannot both win.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime

from sqlalchemy import ColumnElement, func, select, update

from db.models import DISCORD, WEB, Job, utcnow
from db.records import JobOutput, JobRecord, NewJob, Page
from db.session import Store
from engine.job_status import UNFINISHED, JobStatus

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 4000  # error text kept per job (tracebacks are logged, not stored)
MAX_ID = 2 ** 63 - 1  # BIGINT / SQLite INTEGER: a larger id cannot exist (and the driver would raise)


# --- creating and reading -------------------------------------------------------------------------------

async def create_job(store: Store, new: NewJob) -> JobRecord:
    """Write a queued job and return it with its id (the id that goes in button custom_ids)."""
    async with store.session() as s, s.begin():
        row = Job(**asdict(new), status=JobStatus.QUEUED, created_at=utcnow())
        s.add(row)
        await s.flush()
        record = JobRecord.from_row(row)
    log.debug("job %d created (%s, user %d)", record.id, record.kind, record.user_id)
    return record


async def get_job(store: Store, job_id: int) -> JobRecord | None:
    if not 0 < job_id <= MAX_ID:  # e.g. an id parsed from an altered button custom_id
        return None
    async with store.session() as s:
        row = await s.get(Job, job_id)
        return JobRecord.from_row(row) if row is not None else None


async def get_jobs(store: Store, job_ids: list[int]) -> dict[int, JobRecord]:
    """Several jobs at once (e.g. a batch, or a job and its parent), by id; missing ids are left out."""
    if not job_ids:
        return {}
    async with store.session() as s:
        rows = (await s.scalars(select(Job).where(Job.id.in_(job_ids)))).all()
        return {row.id: JobRecord.from_row(row) for row in rows}


async def user_history(store: Store, user_id: int, page: int = 1, per_page: int = 10, *,
                       include_deleted: bool = False, guild_id: int | None = None) -> Page:
    """A user's jobs, newest first, one page (counted from 1) plus the total. Other users' jobs never show.
    `guild_id`: only the jobs made in that guild (what a guild's admin may see of someone's history)."""
    # 1. arguments
    if page < 1:
        raise ValueError(f"page counts from 1, not {page}")
    if not 1 <= per_page <= 100:
        raise ValueError(f"per_page must be within 1..100, not {per_page}")
    where: list[ColumnElement[bool]] = [Job.user_id == user_id]
    if not include_deleted:
        where.append(Job.deleted_at.is_(None))
    if guild_id is not None:
        where.append(Job.guild_id == guild_id)
    # 2. total and page in one read transaction (the same snapshot)
    async with store.session() as s, s.begin():
        total = await s.scalar(select(func.count()).select_from(Job).where(*where))
        rows = (await s.scalars(select(Job).where(*where).order_by(Job.id.desc())
                                .offset((page - 1) * per_page).limit(per_page))).all()
        items = [JobRecord.from_row(row) for row in rows]
    return Page(items=items, total=int(total or 0), page=page, per_page=per_page)


async def unfinished_jobs(store: Store) -> list[JobRecord]:
    """Queued and running jobs, oldest first: what to put back on the queue after a restart."""
    async with store.session() as s:
        rows = (await s.scalars(select(Job).where(Job.status.in_(UNFINISHED)).order_by(Job.id))).all()
        return [JobRecord.from_row(row) for row in rows]


async def count_unfinished(store: Store, user_id: int | None = None) -> int:
    """Queued + running jobs of one user, or of everyone when `user_id` is None (the queue cap)."""
    query = select(func.count()).select_from(Job).where(Job.status.in_(UNFINISHED))
    if user_id is not None:
        query = query.where(Job.user_id == user_id)
    async with store.session() as s:
        return int(await s.scalar(query) or 0)


async def count_unfinished_in_guild(store: Store, guild_id: int | None, source: str = DISCORD) -> int:
    """Queued + running jobs made in one guild; `guild_id` None counts the jobs made in direct messages. The web
    console (`source` WEB) is one place of its own: its jobs, whatever the guild."""
    if source == WEB:
        where = Job.source == WEB
    else:
        where = (Job.guild_id.is_(None) if guild_id is None else Job.guild_id == guild_id) & (Job.source == DISCORD)
    query = select(func.count()).select_from(Job).where(Job.status.in_(UNFINISHED), where)
    async with store.session() as s:
        return int(await s.scalar(query) or 0)


async def last_request_at(store: Store, user_id: int) -> datetime | None:
    """When the user's newest job was created (for the cooldown); None if they never asked."""
    async with store.session() as s:
        return await s.scalar(select(Job.created_at).where(Job.user_id == user_id)
                              .order_by(Job.id.desc()).limit(1))


async def undelivered_jobs(store: Store) -> list[JobRecord]:
    """Finished Discord jobs whose result was never delivered (the bot stopped in between), oldest first; not those
    the bot gave up on (`db.deliveries`), nor web jobs (the console shows them in its history)."""
    async with store.session() as s:
        rows = (await s.scalars(select(Job).where(Job.status.in_((JobStatus.DONE, JobStatus.FAILED)),
                                                  Job.source == DISCORD,
                                                  Job.delivered_at.is_(None), Job.deleted_at.is_(None),
                                                  Job.undeliverable_reason.is_(None))
                                .order_by(Job.id))).all()
        return [JobRecord.from_row(row) for row in rows]


# --- state changes (guarded) ------------------------------------------------------------------------------

async def mark_running(store: Store, job_id: int) -> bool:
    """queued → running. False if the job is not queued (cancelled meanwhile, or already taken)."""
    return await _change(store, job_id, (JobStatus.QUEUED,), status=JobStatus.RUNNING, started_at=utcnow())


async def finish_job(store: Store, job_id: int, output: JobOutput) -> bool:
    """queued/running → done with the images, seeds and timings. False if it was cancelled or failed first."""
    values = dict(status=JobStatus.DONE, finished_at=utcnow(), error=None, seeds=list(output.seeds),
                  images=[{"path": str(i.path), "sha256": i.sha256} for i in output.images],
                  timings=dict(output.timings), precision=output.precision or None,
                  profile=output.profile or None, recipe=dict(output.recipe) if output.recipe else None)
    if output.model_id:
        values["model_id"] = output.model_id
    return await _change(store, job_id, UNFINISHED, **values)


async def fail_job(store: Store, job_id: int, error: str) -> bool:
    """queued/running → failed with a message. A job already done or cancelled is left as it is."""
    text = (error or "unknown error")[:MAX_ERROR_CHARS]
    return await _change(store, job_id, UNFINISHED, status=JobStatus.FAILED, finished_at=utcnow(), error=text)


async def cancel_job(store: Store, job_id: int) -> bool:
    """queued/running → cancelled. False if it had already finished (done, failed or cancelled)."""
    return await _change(store, job_id, UNFINISHED, status=JobStatus.CANCELLED, finished_at=utcnow())


async def requeue(store: Store, job_id: int) -> bool:
    """running → queued, for restart recovery: the job runs again from the start."""
    return await _change(store, job_id, (JobStatus.RUNNING,), status=JobStatus.QUEUED, started_at=None)


# --- delivery bookkeeping -----------------------------------------------------------------------------------

async def set_message(store: Store, job_id: int, channel_id: int, message_id: int) -> bool:
    """Record the message that holds the job's result (so Delete and later edits can find it)."""
    return await _change(store, job_id, None, result_channel_id=channel_id, result_message_id=message_id)


async def set_status_message(store: Store, job_id: int, message_id: int) -> bool:
    """Record the status message ("queued #3", "step 5/20") that delivery may edit."""
    return await _change(store, job_id, None, status_message_id=message_id)


async def mark_delivered(store: Store, job_id: int) -> bool:
    """The result (or failure notice) reached Discord. False if it was already marked. The interaction token is
    cleared with it: nothing needs it any more, and a stored secret is one more thing to leak."""
    return await _change(store, job_id, None, _extra=Job.delivered_at.is_(None), delivered_at=utcnow(),
                         interaction_token=None)


async def forget_interaction_tokens(store: Store, issued_before: datetime) -> int:
    """Clear the stored interaction token of every job whose interaction was created before `issued_before`
    (Discord's tokens live 15 minutes: the caller passes now - 15 min). Returns how many were cleared."""
    async with store.session() as s, s.begin():
        result = await s.execute(update(Job).where(Job.interaction_token.is_not(None),
                                                   (Job.interaction_created_at < issued_before)
                                                   | Job.interaction_created_at.is_(None))
                                 .values(interaction_token=None))
    if result.rowcount:
        log.debug("%d expired interaction token(s) cleared", result.rowcount)
    return result.rowcount


async def mark_deleted(store: Store, job_id: int) -> bool:
    """The user deleted the job's message; the record stays for audit. False if it was already deleted."""
    return await _change(store, job_id, None, _extra=Job.deleted_at.is_(None), deleted_at=utcnow())


async def _change(store: Store, job_id: int, from_statuses: tuple[JobStatus, ...] | None, *,
                  _extra: ColumnElement[bool] | None = None, **values) -> bool:
    """One guarded UPDATE in its own transaction; True if it changed the row."""
    query = update(Job).where(Job.id == job_id)
    if from_statuses is not None:
        query = query.where(Job.status.in_(from_statuses))
    if _extra is not None:
        query = query.where(_extra)
    async with store.session() as s, s.begin():
        result = await s.execute(query.values(**values))
    changed = result.rowcount == 1
    if not changed:
        log.debug("job %d: %s not applied (missing, or not in %s)", job_id,
                  sorted(k for k in values if k != "interaction_token"), from_statuses)
    return changed
