"""A job's LoRAs, input image and strength are stored and read back; `upscale` is a kind; migration 0004 keeps every
row and never lets an id be reused (SQLite's AUTOINCREMENT mark survives its table rebuild)."""
from __future__ import annotations

import shutil

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from db import jobs
from db.migrate import MIGRATIONS_DIR, upgrade_to_head
from db.session import open_store

from tests.db.conftest import new_job

LORAS = ({"name": "Anime Style", "strength": 0.8, "sha256": "a" * 64}, {"name": "detail", "strength": -1.0,
                                                                         "sha256": "b" * 64})


async def test_loras_input_image_and_strength_are_stored(store):
    made = await jobs.create_job(store, new_job(loras=LORAS, input_image="/data/images/in-1.png",
                                                input_sha256="c" * 64, denoise=0.6))
    again = await jobs.get_job(store, made.id)
    assert again.loras == LORAS
    assert (again.input_image, again.input_sha256, again.denoise) == ("/data/images/in-1.png", "c" * 64, 0.6)
    plain = await jobs.get_job(store, (await jobs.create_job(store, new_job())).id)
    assert (plain.loras, plain.input_image, plain.denoise) == ((), None, None)


async def test_an_upscale_is_a_kind_of_its_own_with_its_parent(store):
    parent = await jobs.create_job(store, new_job())
    up = await jobs.create_job(store, new_job(kind="upscale", parent_id=parent.id, width=2048, height=2048,
                                              input_image="/x.png", input_sha256="d" * 64, denoise=0.4))
    assert (await jobs.get_job(store, up.id)).kind == "upscale"
    async with store.engine.begin() as conn:
        with pytest.raises(IntegrityError):
            await conn.execute(text("UPDATE jobs SET kind = 'bogus' WHERE id = :id"), {"id": up.id})


def test_an_input_image_needs_its_strength():
    with pytest.raises(ValueError, match="go together"):
        new_job(input_image="/x.png")


async def test_migration_0004_keeps_rows_and_the_autoincrement_mark(db_url, tmp_path):
    # 1. A database at 0003 with three jobs, the last one deleted (its id must never come back).
    before = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, before, ignore=shutil.ignore_patterns("__pycache__", "0004_*", "0005_*"))
    async with await open_store(db_url, migrate=False) as store:
        await upgrade_to_head(store.engine, before)
        async with store.engine.begin() as conn:
            for i in range(3):
                await conn.execute(text(
                    "INSERT INTO jobs (kind, user_id, prompt, seed, count, steps, width, height, guidance, "
                    "variation_strength, status, created_at, delivery_refusals, source) VALUES ('imagine', 7, :p, 1, "
                    "1, 20, 1024, 1024, 3.5, 0, 'done', '2026-11-30 08:00:00', 0, 'discord')"), {"p": f"old {i}"})
            await conn.execute(text("DELETE FROM jobs WHERE id = 3"))
    # 2. Upgrade to head: the rows are there, a new job gets id 4.
    async with await open_store(db_url) as store:
        page = await jobs.user_history(store, 7)
        assert [j.prompt for j in page.items] == ["old 1", "old 0"]
        assert all(j.loras == () and j.denoise is None for j in page.items)
        made = await jobs.create_job(store, new_job(user_id=7, kind="upscale", input_image="/x.png",
                                                    input_sha256="e" * 64, denoise=0.4))
        assert made.id == 4
