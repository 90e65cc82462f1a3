"""The database file itself: migrations, SQLite settings, locking, and what `db` imports."""
from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from db import jobs
from db.migrate import current_revision, head_revision
from db.models import Base
from db.session import StoreError, open_store, sqlite_file

from tests.db.conftest import new_job


def _diffs(conn):
    return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)


async def test_empty_database_migrates_to_head_matching_the_models(db_url):
    assert not sqlite_file(db_url).parent.exists(), "the data folder is made by open_store"
    async with await open_store(db_url) as store:
        assert await current_revision(store.engine) == head_revision()
        async with store.engine.connect() as conn:
            assert await conn.run_sync(_diffs) == []
            names = await conn.run_sync(lambda c: {i["name"] for i in
                                                   __import__("sqlalchemy").inspect(c).get_indexes("jobs")})
    assert {"ix_jobs_user_history", "ix_jobs_status_order"} <= names


async def test_reopening_keeps_every_row(db_url):
    async with await open_store(db_url) as store:
        job = await jobs.create_job(store, new_job(prompt="kept across restarts"))
        await jobs.mark_running(store, job.id)
    async with await open_store(db_url) as store:
        again = await jobs.get_job(store, job.id)
        assert again.prompt == "kept across restarts" and again.status == "running"
        nxt = await jobs.create_job(store, new_job())
        assert nxt.id == job.id + 1


async def test_a_database_from_a_newer_fluxbot_is_refused_with_advice(db_url):
    async with await open_store(db_url) as store:
        async with store.engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(StoreError, match="newer fluxbot"):
        await open_store(db_url)


async def test_wal_foreign_keys_and_busy_timeout_are_on(store, db_url):
    async with store.engine.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
        assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
        assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 10000
    with pytest.raises(IntegrityError, match="FOREIGN KEY"):
        await jobs.create_job(store, new_job(kind="reroll", parent_id=424242))
    assert sqlite3.connect(sqlite_file(db_url)).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _hold_write_lock(path, seconds: float, locked: threading.Event) -> None:
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process writing: nobody else may write
    other.execute("UPDATE jobs SET error = 'held' WHERE id = 1")
    locked.set()
    time.sleep(seconds)
    other.execute("COMMIT")
    other.close()


async def _write_while_locked(store, path, seconds: float) -> float:
    await jobs.create_job(store, new_job())
    locked = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, seconds, locked))
    holder.start()
    try:
        await asyncio.to_thread(locked.wait, 5)
        t0 = time.monotonic()
        await jobs.create_job(store, new_job(prompt="written after the lock"))
        return time.monotonic() - t0
    finally:
        await asyncio.to_thread(holder.join)


async def test_a_write_waits_for_a_locked_database_and_succeeds(store, db_url):
    waited = await _write_while_locked(store, sqlite_file(db_url), 2.0)
    assert 1.5 < waited < 9, f"the write should wait for the lock (~2 s), waited {waited:.1f} s"
    assert (await jobs.user_history(store, 111)).items[0].prompt == "written after the lock"


async def test_without_the_busy_timeout_the_same_write_fails(db_url):
    async with await open_store(db_url, busy_timeout_s=0.1) as store:
        with pytest.raises(OperationalError, match="locked"):
            await _write_while_locked(store, sqlite_file(db_url), 1.0)


def test_db_imports_neither_torch_nor_discord():
    """Nor anything of the engine but the status vocabulary, a leaf module that imports nothing (engine.job_status)."""
    code = ("import sys, db, db.models, db.records, db.session, db.jobs, db.migrate; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'discord', 'diffusers', 'engine', "
            "'bot')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['engine', 'engine.job_status']"


async def test_an_in_memory_database_works_for_quick_experiments():
    async with await open_store("sqlite+aiosqlite://") as store:
        job = await jobs.create_job(store, new_job())
        assert (await jobs.get_job(store, job.id)).prompt == job.prompt
        with pytest.raises(IntegrityError):
            await jobs.create_job(store, new_job(kind="vary", parent_id=job.id + 100))


async def test_sql_errors_never_show_the_row_values(store):
    with pytest.raises(IntegrityError) as info:
        await jobs.create_job(store, new_job(kind="reroll", parent_id=424242, interaction_token="tok-SECRET"))
    assert "tok-SECRET" not in str(info.value)
