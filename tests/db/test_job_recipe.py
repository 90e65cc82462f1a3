"""The engine recipe a job was made with (migration 0005): stored when the job finishes, read back for /show; jobs
made before recipes were recorded keep NULL."""
from __future__ import annotations

import shutil

from sqlalchemy import text

from db import jobs
from db.migrate import MIGRATIONS_DIR, upgrade_to_head
from db.records import JobOutput
from db.session import open_store
from engine.recipe import EngineRecipe

from tests.db.conftest import new_job

RECIPE = EngineRecipe(fp8="all-linear", compute="fp8", compile=True, torch="2.11.0", diffusers="0.42.1",
                      device="cuda sm_90")


async def test_a_finished_job_keeps_the_recipe_it_was_made_with(store):
    made = await jobs.create_job(store, new_job())
    assert (await jobs.get_job(store, made.id)).recipe is None          # not made yet
    await jobs.finish_job(store, made.id, JobOutput(seeds=[42], images=[], recipe=RECIPE.to_dict()))
    again = await jobs.get_job(store, made.id)
    assert EngineRecipe.from_dict(again.recipe) == RECIPE
    other = await jobs.create_job(store, new_job())
    await jobs.finish_job(store, other.id, JobOutput(seeds=[1], images=[]))   # an engine that gave none
    assert (await jobs.get_job(store, other.id)).recipe is None


async def test_migration_0005_keeps_older_jobs_with_no_recipe(db_url, tmp_path):
    # 1. A database at 0004 with one finished job.
    before = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, before, ignore=shutil.ignore_patterns("__pycache__", "0005_*"))
    async with await open_store(db_url, migrate=False) as store:
        await upgrade_to_head(store.engine, before)
        async with store.engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO jobs (kind, user_id, prompt, seed, count, steps, width, height, guidance, "
                "variation_strength, status, created_at, delivery_refusals, source) VALUES ('imagine', 7, 'old', 1, "
                "1, 20, 1024, 1024, 3.5, 0, 'done', '2026-11-30 08:00:00', 0, 'discord')"))
    # 2. Upgraded: the job is there without a recipe, and /show can tell (EngineRecipe.from_dict gives None).
    async with await open_store(db_url) as store:
        old = await jobs.get_job(store, 1)
        assert old.prompt == "old" and old.recipe is None
        assert RECIPE.differences(EngineRecipe.from_dict(old.recipe)) == ["no engine recipe was recorded with the image"]
