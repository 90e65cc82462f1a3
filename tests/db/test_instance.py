"""The database's identity, bounded delivery retries, skipping job ids a restored backup forgot, and noticing a
database file deleted or replaced under the open store."""
from __future__ import annotations

import os
import shutil
import sqlite3

import pytest
from alembic import command

from db import deliveries, instance, jobs
from db.guard import DatabaseGone
from db.migrate import alembic_config, head_revision
from db.session import open_store, sqlite_file

from tests.db.conftest import new_job


async def test_a_new_database_has_a_random_identity_that_stays(db_url, tmp_path):
    async with await open_store(db_url) as store:
        first = await instance.identity(store)
    async with await open_store(db_url) as store:
        assert await instance.identity(store) == first
    other_url = f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"
    async with await open_store(other_url) as other:
        assert await instance.identity(other) != first
    assert len(first) == 8 and int(first, 16) >= 0


async def test_a_database_made_before_identities_is_upgraded_with_its_rows(db_url):
    # 1. a database at revision 0001 (fluxbot before this change), with a finished job
    async with await open_store(db_url, migrate=False) as store:
        async with store.engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0001_jobs"))
        async with store.engine.begin() as conn:
            await conn.exec_driver_sql(
                "INSERT INTO jobs (kind, user_id, prompt, seed, count, steps, width, height, guidance, "
                "variation_strength, status, created_at) VALUES ('imagine', 7, 'an old fox', 42, 1, 20, 1024, 1024, "
                "3.5, 0.0, 'done', '2026-11-01 10:00:00')")
    # 2. today's fluxbot opens it: the row is kept, with no refusals counted, and the database gets an identity
    async with await open_store(db_url) as store:
        assert store.revision_before == "0001_jobs" and store.revision == head_revision()
        old = await jobs.get_job(store, 1)
        assert (old.prompt, old.status, old.delivery_refusals, old.undeliverable_reason) == \
            ("an old fox", "done", 0, None)
        assert len(await instance.identity(store)) == 8
        assert (await jobs.create_job(store, new_job())).id == 2


async def test_refused_deliveries_are_counted_and_bounded(store):
    job = await jobs.create_job(store, new_job())
    await jobs.finish_job(store, job.id, jobs.JobOutput(seeds=[42], images=[]))
    for expected in (1, 2):
        assert await deliveries.record_refusal(store, job.id, "HTTP 404 Unknown Channel", limit=3) == expected
        assert [j.id for j in await jobs.undelivered_jobs(store)] == [job.id]
    assert await deliveries.record_refusal(store, job.id, "HTTP 404 Unknown Channel", limit=3) == 3
    row = await jobs.get_job(store, job.id)
    assert row.undeliverable_reason == "HTTP 404 Unknown Channel" and row.status == "done"
    assert await jobs.undelivered_jobs(store) == []
    assert await deliveries.record_refusal(store, 999, "x", limit=3) == 0


async def test_job_ids_skip_past_those_a_restored_backup_forgot(store):
    made = [await jobs.create_job(store, new_job()) for _ in range(2)]
    assert await instance.next_job_id(store) == 3
    assert await instance.skip_job_ids_through(store, 1) is None  # nothing to skip
    assert await instance.skip_job_ids_through(store, 7) == 3
    assert (await jobs.create_job(store, new_job())).id == 8
    assert [j.id for j in made] == [1, 2]


async def test_an_empty_database_skips_too(store):
    assert await instance.skip_job_ids_through(store, 4) == 1
    assert (await jobs.create_job(store, new_job())).id == 5


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_database_file_deleted_or_replaced_is_noticed_and_nothing_is_written(db_url, tmp_path, how, caplog):
    path = sqlite_file(db_url)
    async with await open_store(db_url) as store:
        await jobs.create_job(store, new_job(prompt="before"))
        # 1. someone removes the file (or moves another database over it) while the store is open
        if how == "deleted":
            os.remove(path)
        else:
            spare = tmp_path / "spare.db"
            sqlite3.connect(spare).close()
            shutil.move(spare, path)
        # 2. the next transaction, read or write, is refused; the log says why, once
        with pytest.raises(DatabaseGone, match="deleted or replaced"):
            await jobs.create_job(store, new_job(prompt="after"))
        with pytest.raises(DatabaseGone):
            await jobs.get_job(store, 1)
        assert f"was {how}" in caplog.text and caplog.text.count("CRITICAL") == 1
    # 3. nothing was written into the new file
    if how == "replaced":
        assert sqlite3.connect(path).execute("SELECT name FROM sqlite_master").fetchall() == []


async def test_watch_notices_a_deleted_file_while_nobody_uses_the_bot(db_url, caplog):
    import asyncio

    async with await open_store(db_url) as store:
        mine = await instance.identity(store)
        os.remove(sqlite_file(db_url))
        await asyncio.wait_for(instance.watch(store, mine, interval_s=0.01), 5)  # returns once it noticed
        assert "was deleted while the bot ran" in caplog.text
        with pytest.raises(DatabaseGone):
            store.check()
