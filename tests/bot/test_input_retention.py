"""Stored input images follow their jobs' images (bot/input_retention.py), with the real SQLite store and real files:
an input shared by several jobs stays until the last of them is gone, an input no job names goes, 🗑 Delete keeps
files as it keeps the PNGs, a fresh upload is never taken from under its request, and an unreadable database
deletes nothing."""
from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest

from bot.input_retention import inputs_in_use, prune_stored_inputs
from db import jobs
from db.guard import DatabaseGone
from db.job_inputs import input_uses
from db.records import ImageFile, JobOutput, NewJob
from db.session import open_store
from engine.image_files import LEFTOVER_AGE_S, input_path
from engine.retention import prune_images

DAY = 86400


@pytest.fixture
async def store(tmp_path):
    s = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'db' / 'fluxbot.db'}")
    yield s
    await s.close()


def _file(path, age_s: float = 0.0, data: bytes = b"png"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


async def _job(store, images_dir, job_no: int, input_name: str | None, *, done=True, kind="imagine", parent=None):
    """A job naming the input `input_name` (its SHA-256), done with one PNG of its own unless `done` is False."""
    inp = str(input_path(images_dir, input_name)) if input_name else None
    rec = await jobs.create_job(store, NewJob(user_id=1, prompt="a cat", seed=job_no, steps=2, width=256, height=256,
                                              guidance=3.5, kind=kind, parent_id=parent, input_image=inp,
                                              input_sha256=input_name, denoise=0.6 if inp else None))
    if done:
        png = _file(images_dir / f"{rec.id}.png")
        await jobs.finish_job(store, rec.id, JobOutput(seeds=[job_no], images=[ImageFile(str(png), "0" * 64)]))
    return rec.id


def _age(path, days: float) -> None:
    then = time.time() - days * DAY
    os.utime(path, (then, then))


async def test_an_input_shared_by_a_job_and_its_reroll_stays_until_its_last_job_is_gone(store, tmp_path):
    images = tmp_path / "images"
    a, b, c, d = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
    for name in (a, b, c):
        _file(input_path(images, name), age_s=2 * LEFTOVER_AGE_S)
    _file(input_path(images, d))                                      # stored a moment ago, its job not written yet
    first = await _job(store, images, 1, a)                            # img2img
    reroll = await _job(store, images, 2, a, kind="reroll", parent=first)   # 🎲 Reroll: the same input
    other = await _job(store, images, 3, b)
    # 1. 🗑 Delete hides a result's message and keeps its files: the PNG, so the input too.
    await jobs.mark_deleted(store, reroll)
    report = await prune_stored_inputs(store, images, max_age_days=1.0)
    assert [p.name for p in report.deleted] == [f"{c}.png"]           # no job names c: an orphan upload
    # 2. Retention prunes job 1's and job 3's PNGs: b goes with job 3, a stays for the reroll, d is fresh.
    for job_id in (first, other):
        _age(images / f"{job_id}.png", days=10)
    assert len(prune_images(images, 1.0, 0).deleted) == 2
    report = await prune_stored_inputs(store, images, max_age_days=1.0)
    assert [p.name for p in report.deleted] == [f"{b}.png"]
    assert input_path(images, a).is_file() and input_path(images, d).is_file()
    # 3. The reroll's PNG pruned as well: the last job of a is gone, and so is a.
    _age(images / f"{reroll}.png", days=10)
    prune_images(images, 1.0, 0)
    report = await prune_stored_inputs(store, images, max_age_days=1.0)
    assert [p.name for p in report.deleted] == [f"{a}.png"] and report.kept == 1     # d
    # 4. The records are untouched: every job still names its input and its hash.
    assert [(u.job_id, u.input_image) for u in await input_uses(store)] == [
        (first, str(input_path(images, a))), (reroll, str(input_path(images, a))), (other, str(input_path(images, b)))]


async def test_unfinished_and_failed_jobs_keep_their_inputs_by_the_age_rule(store, tmp_path):
    images = tmp_path / "images"
    waiting = await _job(store, images, 1, "e" * 64, done=False)
    failed = await _job(store, images, 2, "f" * 64, done=False)
    await jobs.mark_running(store, failed)
    await jobs.fail_job(store, failed, "out of memory")
    uses = await input_uses(store)
    made = max(u.created_at for u in uses)
    # 1. Queued: needed whatever its age; failed: needed while younger than max_image_age_days.
    assert inputs_in_use(uses, max_age_days=1.0, now=made) == {"e" * 64 + ".png", "f" * 64 + ".png"}
    assert inputs_in_use(uses, max_age_days=1.0, now=made + timedelta(days=2)) == {"e" * 64 + ".png"}
    # 2. Without an age limit a failed job may always be made again: its input stays.
    assert inputs_in_use(uses, max_age_days=0.0, now=made + timedelta(days=400)) == {"e" * 64 + ".png",
                                                                                    "f" * 64 + ".png"}
    assert waiting < failed


async def test_a_database_that_cannot_be_read_deletes_no_input(store, tmp_path):
    images = tmp_path / "images"
    orphan = _file(input_path(images, "9" * 64), age_s=2 * LEFTOVER_AGE_S)
    (tmp_path / "db" / "fluxbot.db").unlink()                  # deleted under the running bot (db/guard.py)
    with pytest.raises(DatabaseGone):
        await prune_stored_inputs(store, images, max_age_days=1.0)
    assert orphan.is_file()


def test_crash_leftovers_of_input_writes_go_and_other_files_stay(tmp_path):
    from engine.retention import prune_inputs

    images = tmp_path / "images"
    folder = input_path(images, "0" * 64).parent
    leftover = _file(folder / f".{'1' * 64}.png.tmp", age_s=2 * LEFTOVER_AGE_S)
    writing = _file(folder / f".{'2' * 64}.png.tmp")
    notes = _file(folder / "notes.png", age_s=2 * LEFTOVER_AGE_S)
    report = prune_inputs(images, in_use=set())
    assert report.leftovers == (leftover,) and writing.is_file() and notes.is_file()
