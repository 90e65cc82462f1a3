"""Start-up and data safety (issue 11, items 1–4): the bot always starts, even when a result it never delivered has
lost its PNG or Discord keeps refusing it; job ids and buttons stay unambiguous when the database is reset or an
older backup is restored; a database file deleted or replaced under the running bot is noticed; crash leftovers
beside the images are pruned. Real FluxBot, real tiny engine, real SQLite, fake Discord on loopback; the bot is
stopped and started again inside a test the way an owner restarts it.

docs/reliability.md lists these tests ("Faults survived"); the last test checks that it does.
"""
from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from db import jobs as store_jobs
from tests.e2e.refusals import private_answer, refusal
from tests.e2e.reliability_kit import *  # noqa: F401,F403 (fixtures and helpers)
from tests.e2e.reliability_kit import crafted_click, delivered, eventually, has_result, imagine, job_rows

log = logging.getLogger(__name__)

FOLLOWUP_OR_EDIT = r"^/webhooks/"
CHANNEL_POST = r"^/channels/\d+/messages$"


async def started(start_bot, bot):
    await start_bot(bot)
    assert await bot.engines.wait_loaded() == 1
    return bot


async def settled(bot, job_id: int):
    """The job once it is finished and the tracker has let go of it (its delivery attempts are over)."""
    job = await store_jobs.get_job(bot.store, job_id)
    if job is None or not job.finished or job_id in bot.tracker.tracked():
        return None
    return job


async def answer(fake, ix) -> str:
    return await fake.wait_until(lambda: private_answer(ix), 10, "a private answer")


# --- 1. start-up never crash-loops --------------------------------------------------------------------------------

async def test_start_up_with_an_undelivered_result_whose_png_is_gone(fake_discord, start_bot, stop_bot, make_rel_bot,
                                                                     caplog):
    fake = fake_discord
    bot = await started(start_bot, await make_rel_bot())
    bot.deliverer.backoff_s = 0.01
    alice = fake.add_user("alice")
    # 1. Discord cannot take results (an outage): two jobs are made, neither is delivered.
    fake.fail(FOLLOWUP_OR_EDIT, 404, times=10_000)
    fake.fail(CHANNEL_POST, 503, times=10_000, method="POST")
    for prompt, seed in (("a red fox", 1), ("a blue whale", 2)):
        await (await imagine(fake, alice, prompt=prompt, seed=seed)).wait_response()
    first = await eventually(lambda: settled(bot, 1), 30)
    assert (await eventually(lambda: settled(bot, 2), 30)).delivered_at is None and first.delivered_at is None
    await stop_bot(bot)
    # 2. While the bot is down, job 1's PNG goes (pruned, or removed by hand); Discord is back.
    Path(first.images[0].path).unlink()
    fake.faults = type(fake.faults)()
    # 3. The bot starts (before the fix: FileNotFoundError in setup_hook at every start, a crash loop) ...
    with caplog.at_level(logging.WARNING, logger="bot"):
        bot = await started(start_bot, await make_rel_bot())
    # ... delivers job 2, and tells alice how to get job 1 back.
    whale = await fake.wait_message(lambda m: has_result(m) and "a blue whale" in m.text(), timeout=30)
    notice = await fake.wait_message(lambda m: "/show job:1" in m.content, timeout=30)
    assert f"<@{alice.id}>" in notice.content and "image file is gone" in notice.content and not notice.attachments
    assert (await delivered(bot, 2)).result_message_id == whale.id
    job1 = await delivered(bot, 1)
    assert "image file was gone" in job1.undeliverable_reason and job1.status == "done"
    assert "job 1: its result was never delivered and its image file is gone" in caplog.text
    # 4. /show makes it again from its record (same seed, so the same pixels).
    shown = await (await fake.slash(alice, "show", {"job": 1})).wait_message(has_result, 30)
    assert "a red fox" in shown.text()


@pytest.mark.parametrize("status, body", [
    (404, {"message": "Unknown Channel", "code": 10003}),                  # the channel was deleted
    (403, {"message": "Cannot send messages to this user", "code": 50007}),  # DMs closed / the bot was removed
], ids=["channel-deleted", "dms-closed"])
async def test_a_refused_delivery_is_retried_at_three_start_ups_then_given_up(fake_discord, start_bot, stop_bot,
                                                                              make_rel_bot, status, body):
    fake = fake_discord
    fake.fail(FOLLOWUP_OR_EDIT, 404, times=10_000)
    refusals = fake.fail(CHANNEL_POST, status, body, times=10_000, method="POST")
    alice = fake.add_user("alice")

    async def refused(n: int):
        job = await store_jobs.get_job(bot.store, 1)
        return job if job is not None and job.delivery_refusals >= n else None

    # 1. The job is made; its delivery is refused (1), then again at two start-ups (2, 3).
    bot = await started(start_bot, await make_rel_bot())
    await (await imagine(fake, alice, prompt="a message for nobody", seed=3)).wait_response()
    for n in (1, 2, 3):
        if n > 1:
            await stop_bot(bot)
            bot = await started(start_bot, await make_rel_bot())
        job = await eventually(lambda: refused(n), 30, f"refusal {n}")
    assert job.delivery_refusals == 3 and job.status == "done" and job.delivered_at is None
    assert f"HTTP {status}" in job.undeliverable_reason
    hits = refusals.hits
    # 2. The fourth start-up does not try again (before the fix: every start-up, forever).
    await stop_bot(bot)
    bot = await started(start_bot, await make_rel_bot())
    time.sleep(0.3)  # anything left to post would have been posted in setup_hook already
    assert refusals.hits == hits and (await store_jobs.get_job(bot.store, 1)).delivery_refusals == 3


# --- 2. ids unambiguous across database resets and restores ---------------------------------------------------------

async def test_buttons_of_a_database_that_was_reset_are_refused_and_its_files_kept(fake_discord, start_bot, stop_bot,
                                                                                  make_rel_bot, engine_faults,
                                                                                  tmp_path):
    from tests.fakediscord.records import MessageState

    fake = fake_discord
    alice = fake.add_user("alice")
    bot = await started(start_bot, await make_rel_bot())
    old_identity = bot.identity
    # 1. Job 1 of the first database, its buttons and file carry that database's identity.
    old_result = await (await imagine(fake, alice, prompt="an old lighthouse", seed=1)).wait_message(has_result, 30)
    old_png = Path((await store_jobs.get_job(bot.store, 1)).images[0].path)
    old_bytes = old_png.read_bytes()
    assert old_png.name == f"{old_identity}-1.png"
    assert old_result.custom_ids == [f"fluxbot:{a}:{old_identity}:1" for a in ("reroll", "vary", "varystrong", "upscale", "edit", "delete")]
    # A message with buttons of a bot version before identities (`fluxbot:<action>:<job id>`), posted then.
    legacy_buttons = [{"type": 2, "style": 2, "label": a, "custom_id": f"fluxbot:{a}:1"} for a in ("cancel", "delete")]
    legacy = fake.create_message(fake.channel.id, "channel", MessageState(
        content="a message of an older bot version", components=[{"type": 1, "components": legacy_buttons}],
        at=fake.clock()))
    await stop_bot(bot)
    # 2. The owner resets the database; the new one issues job 1 again (it runs, paused in its first step).
    for f in tmp_path.glob("fluxbot.db*"):
        f.unlink()
    bot = await started(start_bot, await make_rel_bot())
    assert bot.identity != old_identity
    engine_faults.pause_at_step = engine_faults.calls + 1
    new_ix = await imagine(fake, alice, prompt="a new castle", seed=2)
    await fake.wait_until(lambda: engine_faults.paused.is_set(), 30, "the new job 1 running")
    before = await job_rows(bot.store)
    assert [r[0] for r in before] == [1]
    # 3. Every button of the old database is refused privately, and nothing changes.
    for cid in old_result.custom_ids:
        text = await refusal(fake, await fake.click(alice, old_result, cid))
        assert "earlier database" in text, (cid, text)
    # 4. Old-style buttons on an old message: Cancel and Delete act only from the job's own message.
    for cid in ("fluxbot:cancel:1", "fluxbot:delete:1"):
        text = await refusal(fake, await crafted_click(fake, alice, cid, message=legacy))
        assert "older than job #1" in text, (cid, text)
    assert await job_rows(bot.store) == before
    assert not old_result.deleted and not legacy.deleted
    # 5. The new job finishes under the new identity; the old file is untouched.
    engine_faults.release.set()
    new_result = await new_ix.wait_message(has_result, 30)
    new_png = Path((await store_jobs.get_job(bot.store, 1)).images[0].path)
    assert new_png.name == f"{bot.identity}-1.png" and old_png.read_bytes() == old_bytes
    # 6. This database's buttons work as before.
    assert "Job #1 deleted" in await answer(fake, await fake.click(alice, new_result, next(c for c in new_result.custom_ids if ":delete:" in c)))


async def test_an_older_backup_restored_never_issues_a_job_id_again(fake_discord, start_bot, stop_bot, make_rel_bot,
                                                                    tmp_path, caplog):
    fake = fake_discord
    alice = fake.add_user("alice")
    db = tmp_path / "fluxbot.db"
    # 1. Job 1, then a backup; then job 2.
    bot = await started(start_bot, await make_rel_bot())
    await (await imagine(fake, alice, prompt="before the backup", seed=1)).wait_message(has_result, 30)
    await stop_bot(bot)
    src, dst = sqlite3.connect(db), sqlite3.connect(tmp_path / "backup.db")
    src.backup(dst)  # what `sqlite3 fluxbot.db ".backup backup.db"` does
    src.close()
    dst.close()
    bot = await started(start_bot, await make_rel_bot())
    second = await (await imagine(fake, alice, prompt="after the backup", seed=2)).wait_message(has_result, 30)
    second_png = Path((await eventually(lambda: delivered(bot, 2))).images[0].path)
    second_bytes = second_png.read_bytes()
    await stop_bot(bot)
    # 2. The owner restores the backup: the database forgets job 2.
    for f in tmp_path.glob("fluxbot.db-*"):
        f.unlink()
    shutil.copyfile(tmp_path / "backup.db", db)
    with caplog.at_level(logging.WARNING, logger="bot"):
        bot = await started(start_bot, await make_rel_bot())
    assert "restored from an older backup" in caplog.text
    # 3. The next job is 3, not 2 again (before the fix: 2, and 2's PNG was overwritten).
    await (await imagine(fake, alice, prompt="after the restore", seed=3)).wait_message(has_result, 30)
    await eventually(lambda: delivered(bot, 3))
    rows = await job_rows(bot.store)
    assert [r[0] for r in rows] == [1, 3]
    assert second_png.read_bytes() == second_bytes
    # 4. Job 2's buttons name a job that no longer exists: a clear answer, nothing changes.
    text = await refusal(fake, await fake.click(alice, second, next(c for c in second.custom_ids if ":delete:" in c)))
    assert "Job #2 does not exist" in text
    assert await job_rows(bot.store) == rows


# --- 3. the database file deleted or replaced under the running bot -------------------------------------------------

@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_database_file_deleted_or_replaced_while_running_refuses_new_jobs(fake_discord, start_bot,
                                                                                make_rel_bot, tmp_path, how, caplog):
    fake = fake_discord
    alice = fake.add_user("alice")
    bot = await started(start_bot, await make_rel_bot())
    await (await imagine(fake, alice, prompt="a first light", seed=1)).wait_message(has_result, 30)
    await eventually(lambda: delivered(bot, 1))
    # 1. The file goes (`rm`), or another one is moved over it (`mv other.db fluxbot.db`).
    db = tmp_path / "fluxbot.db"
    if how == "deleted":
        db.unlink()
    else:
        sqlite3.connect(tmp_path / "other.db").close()
        os.replace(tmp_path / "other.db", db)
    # 2. A new job is refused privately with the reason (before the fix: accepted and written into the deleted
    #    file, or "Something went wrong" from an empty one).
    with caplog.at_level(logging.CRITICAL, logger="db"):
        text = await refusal(fake, await imagine(fake, alice, prompt="a second light", seed=2))
    assert "database file was deleted or replaced" in text and "owner restarts" in text
    assert f"was {how}" in caplog.text
    # 3. Nothing was made, nothing was written into the new file.
    assert len([p for p in (tmp_path / "images").iterdir() if p.suffix == ".png"]) == 1
    if how == "replaced":
        assert sqlite3.connect(db).execute("SELECT name FROM sqlite_master").fetchall() == []


# --- 4. crash leftovers and the default retention --------------------------------------------------------------------

async def test_crash_leftovers_are_pruned_at_start_and_the_images_folder_is_bounded_by_default(fake_discord, start_bot,
                                                                                              make_rel_bot, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    # What a kill in the middle of `save_png` leaves: its temporary file beside the image.
    leftover, writing = images / ".1a2b3c4d-7.png.4242.tmp", images / ".1a2b3c4d-8.png.4242.tmp"
    for f in (leftover, writing):
        f.write_bytes(b"\x89PNG half a file")
    an_hour_ago = time.time() - 3600
    os.utime(leftover, (an_hour_ago, an_hour_ago))
    bot = await started(start_bot, await make_rel_bot())  # the default [storage] section
    assert bot.config.storage.max_images_gib == 20.0
    await eventually(lambda: _gone(leftover), 10, "the leftover pruned")
    assert writing.exists(), "a temporary file young enough to be a write in progress was deleted"


async def _gone(path: Path) -> bool:
    return not path.exists()


def test_every_data_safety_test_is_in_the_reliability_doc():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "reliability.md").read_text(encoding="utf-8")
    names = [n for n in globals() if n.startswith("test_") and n != "test_every_data_safety_test_is_in_the_reliability_doc"]
    missing = [n for n in names if f"`{n}`" not in doc]
    assert not missing, f"docs/reliability.md's fault table lacks {missing}"
