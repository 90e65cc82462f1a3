"""This database's identity, and keeping job ids unambiguous when the database goes back in time.

`identity(store)` is a random 8-hex-digit id made when the database was created (`instance` table, migration
0002). The bot puts it into new button custom_ids and image file names: a database that is reset starts its job
ids at 1 again, but under a new identity, so an old button or file is never taken for a new job's.

A database restored from an older backup keeps its identity and would issue again the ids it gave out after the
backup. The images folder remembers the highest id written under each identity (`engine.image_files.IdMark`);
`skip_job_ids_through(store, highest)` makes the next job id larger than that, so those ids stay unused.

`watch(store, identity, interval_s)` checks now and then, also while nobody uses the bot, that the file is still
there (through the store's guard) and that the database still answers with the identity it had at start-up. The
latter is best effort: a file copied over the open one keeps its inode, and while SQLite's write-ahead log still
holds the identity row the open connections go on reading it from there.
"""
from __future__ import annotations

import asyncio
import logging
import secrets

from sqlalchemy import func, select, text

from db.guard import DatabaseGone
from db.models import Instance, Job, utcnow
from db.session import Store

log = logging.getLogger(__name__)


def new_identity() -> str:
    return secrets.token_hex(4)


async def read_identity(store: Store) -> str | None:
    async with store.session() as s:
        return await s.scalar(select(Instance.identity).where(Instance.id == 1))


async def identity(store: Store) -> str:
    """This database's identity (made now if the database somehow has none, e.g. its row was deleted)."""
    async with store.session() as s, s.begin():
        found = await s.scalar(select(Instance.identity).where(Instance.id == 1))
        if found is None:
            found = new_identity()
            s.add(Instance(id=1, identity=found, created_at=utcnow()))
            log.warning("the database had no identity; it is now %s", found)
    return found


async def next_job_id(store: Store) -> int:
    """The id the next job will get (ids are never reused: SQLite AUTOINCREMENT, a Postgres sequence)."""
    async with store.session() as s:
        if store.engine.dialect.name == "sqlite":
            seq = await s.scalar(text("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'"))
            top = await s.scalar(select(func.max(Job.id)))
            return max(int(seq or 0), int(top or 0)) + 1
        if store.engine.dialect.name == "postgresql":
            last, called = (await s.execute(text(f"SELECT last_value, is_called FROM {await _pg_sequence(s)}"))).one()
            return int(last) + 1 if called else int(last)
        top = await s.scalar(select(func.max(Job.id)))
        return int(top or 0) + 1


async def skip_job_ids_through(store: Store, highest: int) -> int | None:
    """Make sure the next job id is larger than `highest`. Returns the next id it had when it had to move it,
    else None. On SQLite and Postgres only (other databases: logged, not moved)."""
    before = await next_job_id(store)
    if highest < before:
        return None
    dialect = store.engine.dialect.name
    async with store.session() as s, s.begin():
        if dialect == "sqlite":
            moved = await s.execute(text("UPDATE sqlite_sequence SET seq = :h WHERE name = 'jobs'"), {"h": highest})
            if moved.rowcount == 0:
                await s.execute(text("INSERT INTO sqlite_sequence (name, seq) VALUES ('jobs', :h)"), {"h": highest})
        elif dialect == "postgresql":
            await s.execute(text("SELECT setval(CAST(:seq AS regclass), :h, true)"),
                            {"seq": await _pg_sequence(s), "h": highest})
        else:
            log.warning("job ids up to %d were issued before; cannot skip them on %s", highest, dialect)
            return None
    return before


async def _pg_sequence(session) -> str:
    return str(await session.scalar(text("SELECT pg_get_serial_sequence('jobs', 'id')")))


async def watch(store: Store, expected: str, interval_s: float) -> None:
    """Until cancelled: every `interval_s`, read the identity; another one means the database was replaced, and
    the store's guard then refuses everything (it logs why). Ends when the guard has failed."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            found = await read_identity(store)
        except DatabaseGone:
            return
        except Exception as e:  # noqa: BLE001  (a busy or briefly unreachable database: try again later)
            log.warning("checking the database's identity failed (%s); trying again in %.0f s", e, interval_s)
            continue
        if found != expected:
            store.guard.fail(f"the database {store.url} now holds another database (identity {found}, was "
                             f"{expected}): it was replaced while the bot ran")
            return
