"""Where a job was asked for (migration 0003): web jobs sit beside Discord jobs without taking their places."""
from __future__ import annotations

import shutil

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from db import jobs
from db.migrate import MIGRATIONS_DIR, upgrade_to_head
from db.models import DISCORD, WEB
from db.records import JobOutput
from db.session import open_store

from tests.db.conftest import new_job

WEB_USER = -12345  # a web login's id (bot/web/jobs.py web_user_id: negative)


def web_job(**kw):
    return new_job(user_id=WEB_USER, guild_id=None, channel_id=None, source=WEB, user_name="alice", **kw)


async def test_a_web_job_keeps_its_source_and_login(store):
    made = await jobs.create_job(store, web_job())
    again = await jobs.get_job(store, made.id)
    assert (again.source, again.user_name, again.user_id) == (WEB, "alice", WEB_USER)
    discord = await jobs.get_job(store, (await jobs.create_job(store, new_job())).id)
    assert (discord.source, discord.user_name) == (DISCORD, None)


def test_an_unknown_source_is_refused():
    with pytest.raises(ValueError, match="source 'irc'"):
        new_job(source="irc")


async def test_web_jobs_are_never_delivered_to_discord(store):
    # the bot's start-up delivers finished jobs it never delivered: a web job has nowhere to go in Discord
    web, discord = (await jobs.create_job(store, web_job())), (await jobs.create_job(store, new_job()))
    for job in (web, discord):
        await jobs.finish_job(store, job.id, JobOutput(seeds=[42], images=[]))
    assert [j.id for j in await jobs.undelivered_jobs(store)] == [discord.id]


async def test_the_web_console_is_one_place_for_the_per_server_cap(store):
    await jobs.create_job(store, web_job())
    await jobs.create_job(store, web_job())
    await jobs.create_job(store, new_job(guild_id=None))  # a DM job
    await jobs.create_job(store, new_job(guild_id=77))
    assert await jobs.count_unfinished_in_guild(store, None) == 1  # DMs: web jobs are not DMs
    assert await jobs.count_unfinished_in_guild(store, None, source=WEB) == 2
    assert await jobs.count_unfinished_in_guild(store, 77) == 1


async def test_upgrading_from_0002_keeps_rows_and_never_reuses_an_id(db_url, tmp_path):
    # 1. a database made by the fluxbot before 0003, with two jobs and an id skipped past (a restored backup)
    old_dir = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, old_dir)
    for later in (old_dir / "versions").glob("0*.py"):
        if later.name[:4] > "0002":
            later.unlink()
    (tmp_path / "data").mkdir()
    engine = create_async_engine(db_url)
    await upgrade_to_head(engine, old_dir)
    async with engine.begin() as conn:
        for _ in range(2):
            await conn.execute(text("INSERT INTO jobs (kind, user_id, prompt, seed, count, steps, width, height, "
                                    "guidance, variation_strength, status, created_at, delivery_refusals) VALUES "
                                    "('imagine', 7, 'old', 1, 1, 4, 256, 256, 3.5, 0, 'done', '2026-01-01', 0)"))
        await conn.execute(text("UPDATE sqlite_sequence SET seq = 40 WHERE name = 'jobs'"))
    await engine.dispose()
    # 2. today's fluxbot opens it: old rows are Discord's, and the next id comes after the skipped ones
    async with await open_store(db_url) as store:
        old = await jobs.get_job(store, 1)
        assert (old.source, old.user_name, old.prompt) == (DISCORD, None, "old")
        assert (await jobs.create_job(store, web_job())).id == 41
