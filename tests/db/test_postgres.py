"""The scale-out path: the same store on a real Postgres server (a throwaway one, unix socket only).

Skipped where asyncpg (`pip install fluxbot[postgres]`) or the Postgres server binaries are missing.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from db import jobs
from db.migrate import current_revision, head_revision
from db.models import Base
from db.records import ImageFile, JobOutput
from db.session import open_store

from tests.db.conftest import new_job

pytest.importorskip("asyncpg", reason="pip install fluxbot[postgres] to test the Postgres path")

PORT = 5432  # the socket lives in a private folder: no clash with any other server


def _server_command() -> list[str]:
    """How to run Postgres binaries here: as ourselves, or (Postgres refuses root) as user postgres."""
    initdb = shutil.which("initdb")
    if initdb is None:
        pytest.skip("no Postgres server binaries (initdb) on PATH")
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no 'postgres' user to run the server as")
    return ["runuser", "-u", "postgres", "--"]


@pytest.fixture(scope="module")
def pg_server():
    as_user = _server_command()
    bindir = Path(os.path.realpath(shutil.which("initdb"))).parent
    root = Path(tempfile.mkdtemp(prefix="fluxbot-pg-"))
    root.chmod(0o755)
    if as_user:
        shutil.chown(root, "postgres")
    data = root / "data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "fluxbot",
                    "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                    f"-k {root} -p {PORT} -c listen_addresses='' -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        yield root
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


_names = itertools.count()


@pytest.fixture
async def pg_url(pg_server):
    """A fresh, empty database on the server for each test."""
    import asyncpg
    name = f"fluxbot_test_{os.getpid()}_{next(_names)}"
    admin = await asyncpg.connect(host=str(pg_server), port=PORT, user="fluxbot", database="postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"postgresql+asyncpg://fluxbot@/{name}?host={pg_server}&port={PORT}"


async def test_postgres_migrates_to_head_matching_the_models(pg_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    async with await open_store(pg_url) as store:
        assert await current_revision(store.engine) == head_revision()
        async with store.engine.connect() as conn:
            diffs = await conn.run_sync(lambda c: compare_metadata(
                MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata))
        assert diffs == []


async def test_postgres_lifecycle_with_discord_sized_ids(pg_url):
    snowflake = 1_234_567_890_123_456_789  # > 2**31: needs bigint
    async with await open_store(pg_url) as store:
        job = await jobs.create_job(store, new_job(user_id=snowflake, seed=2**32 - 1, guild_id=snowflake))
        assert await jobs.mark_running(store, job.id)
        assert await jobs.finish_job(store, job.id, JobOutput(seeds=[2**32 - 1], images=[ImageFile("a.png", "f" * 64)],
                                                              timings={"total": 1.5}))
        assert not await jobs.fail_job(store, job.id, "late")
    async with await open_store(pg_url) as store:  # re-open: migrations are a no-op, rows stay
        done = await jobs.get_job(store, job.id)
        assert (done.status, done.user_id, done.seed, done.timings) == ("done", snowflake, 2**32 - 1, {"total": 1.5})
        assert done.created_at.utcoffset().total_seconds() == 0 and done.finished_at >= done.started_at
        page = await jobs.user_history(store, snowflake)
        assert page.total == 1 and await jobs.last_request_at(store, snowflake) == done.created_at


async def test_postgres_racing_finish_and_cancel_have_one_winner(pg_url):
    async with await open_store(pg_url) as store:
        made = [await jobs.create_job(store, new_job()) for _ in range(10)]
        for job in made:
            await jobs.mark_running(store, job.id)
        output = JobOutput(seeds=[42], images=[])
        for job in made:
            won = await asyncio.gather(jobs.finish_job(store, job.id, output), jobs.cancel_job(store, job.id),
                                       jobs.fail_job(store, job.id, "oom"))
            assert sum(won) == 1, f"exactly one state change may win, got {won}"
        assert await jobs.count_unfinished(store) == 0
