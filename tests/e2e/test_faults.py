"""Faults the bot must survive: the engine failing or running out of memory mid-job, Discord answering 500 /
429 / 404, a result message deleted under a button, the SQLite file locked by someone else, an images folder
that cannot be written. Real FluxBot, real tiny engine, real SQLite, fake Discord on loopback.

The table of docs/reliability.md ("Faults survived") lists these tests one per row. The engine's faults run on both
`[engine] backend`s (tests/support/backends.py): with Ray, the seam is in the engine actor's DiT.
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time

from db import jobs as store_jobs
from tests.e2e.reliability_kit import *  # noqa: F401,F403 (fixtures and helpers)
from tests.e2e.reliability_kit import (count_rows, crafted_click, delivered, eventually, has_result, imagine,
                                       job_buttons)
from tests.support.backends import backend, backend_bot, backend_faults, on_both_backends  # noqa: F401 (fixtures)

log = logging.getLogger(__name__)


async def started(start_bot, bot):
    await start_bot(bot)
    assert await bot.engines.wait_loaded() == 1
    return bot


def final_status(ix, word: str):
    """The interaction's own reply once it shows `word` (Done / Failed / Cancelled)."""
    return ix.wait_message(lambda m: m.kind == "response" and word in m.content, timeout=30)


# --- the engine -----------------------------------------------------------------------------------------------------

@on_both_backends
async def test_engine_error_mid_job_fails_that_job_and_the_worker_goes_on(fake_discord, start_bot, backend_bot,
                                                                          backend_faults):
    fake, engine_faults = fake_discord, backend_faults
    bot = await started(start_bot, await backend_bot())
    alice = fake.add_user("alice")
    # 1. The DiT raises in the second of two steps (after step 1 reported progress).
    engine_faults.fail_at_step = 2
    engine_faults.error = RuntimeError("CUDA error: an illegal memory access was encountered")
    ix = await imagine(fake, alice, prompt="a broken bridge", seed=1, steps=2)
    status = await final_status(ix, "Failed")
    # 2. The user reads what happened in the job's own reply, with no Cancel button left; no image.
    assert "job 1" in status.content and "image generation failed" in status.content
    assert "illegal memory access" in status.content
    assert status.custom_ids == []
    assert not any(has_result(m) for m in fake.messages)
    job = await store_jobs.get_job(bot.store, 1)
    assert job.status == "failed" and "illegal memory access" in job.error and not job.images
    # 3. The worker goes on: the next job is made and delivered.
    result = await (await imagine(fake, alice, prompt="a whole bridge", seed=2)).wait_message(has_result, 30)
    assert "a whole bridge" in result.text()
    assert (await store_jobs.get_job(bot.store, 2)).status == "done"
    assert engine_faults.calls == 2 + 2


@on_both_backends
async def test_cuda_oom_is_retried_on_a_leaner_profile_and_delivered(fake_discord, start_bot, backend_bot,
                                                                     backend_faults, caplog):
    fake, engine_faults = fake_discord, backend_faults
    bot = await started(start_bot, await backend_bot())
    alice = fake.add_user("alice")
    engine_faults.oom_times = 1  # the first forward runs out of memory, the retry has room
    with caplog.at_level(logging.WARNING, logger="engine"):
        result = await (await imagine(fake, alice, prompt="a tall tower", seed=5)).wait_message(has_result, 30)
    # 1. The user just gets the image.
    assert "a tall tower" in result.text()
    job = await eventually(lambda: delivered(bot, 1))
    assert job.status == "done" and job.error in (None, "")
    # 2. The owner's log says what happened: OOM on resident, retried on the leanest plan (streamed).
    text = caplog.text
    assert "out of memory on profile resident; retrying jobs [1] on streamed" in text
    assert engine_faults.ooms_raised == 1


@on_both_backends
async def test_cuda_oom_twice_fails_with_advice(fake_discord, start_bot, backend_bot, backend_faults):
    fake, engine_faults = fake_discord, backend_faults
    bot = await started(start_bot, await backend_bot())
    alice = fake.add_user("alice")
    engine_faults.oom_times = 99  # never enough memory
    status = await final_status(await imagine(fake, alice, prompt="a huge poster", seed=5), "Failed")
    # 1. One retry only, then a failure that says what to try.
    assert engine_faults.ooms_raised == 2
    assert "out of GPU memory" in status.content
    assert "smaller size" in status.content and "[engine] stream_prefetch" in status.content
    job = await store_jobs.get_job(bot.store, 1)
    assert job.status == "failed" and "out of GPU memory" in job.error
    # 2. Memory is back: the next job runs.
    engine_faults.oom_times = 0
    await (await imagine(fake, alice, prompt="a small poster", seed=6)).wait_message(has_result, 30)


# --- Discord --------------------------------------------------------------------------------------------------------

FOLLOWUP = r"^/webhooks/\d+/[^/]+$"  # POST: the followup that carries the result
CHANNEL_POST = r"^/channels/\d+/messages$"


def results_of(fake) -> list:
    return [m for m in fake.messages if has_result(m) and not m.deleted]


async def test_discord_500_on_the_followup_is_retried_and_delivered_once(fake_discord, start_bot, make_rel_bot):
    fake = fake_discord
    bot = await started(start_bot, await make_rel_bot())
    alice = fake.add_user("alice")
    fault = fake.fail(FOLLOWUP, 500, times=1, method="POST")
    ix = await imagine(fake, alice, prompt="a server room", seed=3)
    result = await ix.wait_message(has_result, 30)
    assert fault.hits == 1 and result.kind == "followup"
    job = await eventually(lambda: delivered(bot, 1))
    assert job.result_message_id == result.id
    await asyncio.sleep(0.2)
    assert len(results_of(fake)) == 1  # the retry did not post it twice


async def test_discord_429_on_the_followup_waits_retry_after_then_delivers(fake_discord, start_bot, make_rel_bot):
    fake = fake_discord
    bot = await started(start_bot, await make_rel_bot())
    alice = fake.add_user("alice")
    fault = fake.fail(FOLLOWUP, 429, times=1, retry_after=0.6, method="POST")
    ix = await imagine(fake, alice, prompt="a traffic jam", seed=3)
    result = await ix.wait_message(has_result, 30)
    # 1. The 429, then the same request again no sooner than Retry-After.
    posts = fake.requests_to(FOLLOWUP, "POST")
    assert [r.status for r in posts] == [429, 200] and fault.hits == 1
    assert posts[1].at - posts[0].at >= 0.55
    log.info("429: retried %.2f s after the 429 (retry_after 0.6 s)", posts[1].at - posts[0].at)
    # 2. Delivered once, recorded.
    assert (await eventually(lambda: delivered(bot, 1))).result_message_id == result.id
    assert len(results_of(fake)) == 1


async def test_unknown_interaction_on_the_followup_delivers_by_channel_message(fake_discord, start_bot,
                                                                                make_rel_bot):
    fake = fake_discord
    bot = await started(start_bot, await make_rel_bot())
    alice = fake.add_user("alice")
    # Every webhook call of the interaction (status edits and the followup) gets 404 from now on.
    fault = fake.fail(r"^/webhooks/", 404, body={"message": "Unknown interaction", "code": 10062}, times=1000)
    ix = await imagine(fake, alice, prompt="a lost parcel", seed=3)
    await ix.wait_response()
    result = await fake.wait_message(lambda m: m.kind == "channel" and has_result(m), timeout=30)
    # 1. The result is a channel message that mentions the user, with working buttons.
    assert f"<@{alice.id}>" in result.content and "a lost parcel" in result.text()
    assert result.custom_ids == job_buttons(bot, 1)
    assert fault.hits >= 1
    job = await eventually(lambda: delivered(bot, 1))
    assert job.result_message_id == result.id and job.status == "done"
    assert len(results_of(fake)) == 1


async def test_initial_response_too_late_still_delivers_by_channel_message(fake_discord, start_bot, make_rel_bot,
                                                                          monkeypatch):
    # The tracker waits ATTACH_WAIT_S (10 s) for a status message that will never exist here; shortened.
    monkeypatch.setattr("bot.tracker.ATTACH_WAIT_S", 0.5)
    fake = fake_discord
    bot = await started(start_bot, await make_rel_bot())
    alice = fake.add_user("alice")
    fake.response_deadline_s = 0.0  # every answer is "too late": 404 Unknown interaction, token unusable
    await imagine(fake, alice, prompt="a late ferry", seed=3)
    result = await fake.wait_message(lambda m: m.kind == "channel" and has_result(m), timeout=30)
    # The job was queued before the answer failed; it is made and posted in the channel with a mention.
    assert f"<@{alice.id}>" in result.content and "a late ferry" in result.text()
    job = await eventually(lambda: delivered(bot, 1))
    assert job.result_message_id == result.id and await count_rows(bot.store) == 1
    assert [r.status for r in fake.requests_to(r"/callback$")] and \
        all(r.status == 404 for r in fake.requests_to(r"/callback$"))


async def test_when_no_way_works_the_job_stays_done_and_show_finds_it(fake_discord, start_bot, make_rel_bot):
    fake = fake_discord
    bot = await started(start_bot, await make_rel_bot())
    bot.deliverer.backoff_s = 0.01
    alice = fake.add_user("alice")
    fake.fail(r"^/webhooks/", 404, times=1000)
    channel_fault = fake.fail(CHANNEL_POST, 503, times=1000, method="POST")
    ix = await imagine(fake, alice, prompt="a message in a bottle", seed=3)
    await ix.wait_response()
    await fake.wait_until(lambda: channel_fault.hits >= bot.deliverer.attempts, 30, "every delivery attempt")
    job = await eventually(lambda: _settled(bot, 1))
    assert job.status == "done" and job.delivered_at is None and job.images
    # Discord is back: /show posts the image from disk, without a new job.
    fake.faults = type(fake.faults)()
    shown = await (await fake.slash(alice, "show", {"job": 1})).wait_message(has_result, 30)
    assert "a message in a bottle" in shown.text() and await count_rows(bot.store) == 1


async def _settled(bot, job_id):
    """The job once the tracker has let go of it (its delivery attempts are over)."""
    if job_id in bot.tracker.tracked():
        return None
    return await store_jobs.get_job(bot.store, job_id)


async def test_result_message_deleted_before_delete_and_reroll_are_pressed(fake_discord, start_bot, make_rel_bot):
    fake = fake_discord
    bot = await started(start_bot, await make_rel_bot())
    alice, bob = fake.add_user("alice"), fake.add_user("bob")
    result = await (await imagine(fake, alice, prompt="a sandcastle", seed=4)).wait_message(has_result, 30)
    await fake.delete_message(result)  # a moderator removes it; alice's client still shows it
    # 1. 🗑 Delete: the record is marked deleted; alice gets a clear answer, not an error.
    ix = await crafted_click(fake, alice, job_buttons(bot, 1, ["delete"])[0], message=result)
    await ix.wait_response()
    await fake.wait_until(lambda: ix.messages or ix.response, 5, "an answer to the click")
    assert "Job #1 deleted (its message was already gone)" in _answer_text(ix), _answer_text(ix)
    assert (await store_jobs.get_job(bot.store, 1)).deleted_at is not None
    # 2. 🎲 Reroll from the same stale message: a new job, delivered.
    ix = await crafted_click(fake, bob, job_buttons(bot, 1)[0], message=result)
    rerolled = await ix.wait_message(has_result, 30)
    job2 = await store_jobs.get_job(bot.store, 2)
    assert (job2.parent_id, job2.user_id, job2.prompt) == (1, bob.id, "a sandcastle")
    assert rerolled.custom_ids[0] == job_buttons(bot, 2)[0]


def _answer_text(ix) -> str:
    parts = [str(ix.response.data) if ix.response else ""]
    parts += [m.text() for m in ix.messages]
    return " ".join(parts)


# --- the host ---------------------------------------------------------------------------------------------------------

async def test_sqlite_locked_by_another_connection_for_3_s(fake_discord, start_bot, make_rel_bot, tmp_path):
    fake = fake_discord
    bot = await started(start_bot, await make_rel_bot())
    alice = fake.add_user("alice")
    # 1. Another program holds the write lock for 3 s (e.g. a backup script or `sqlite3` shell).
    other = sqlite3.connect(tmp_path / "fluxbot.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")
    other.execute("UPDATE jobs SET prompt = prompt")  # take the write lock for real
    release = threading.Timer(3.0, other.execute, args=("COMMIT",))
    release.start()
    try:
        t0 = time.monotonic()
        ix = await imagine(fake, alice, prompt="a locked door", seed=7)
        # 2. Discord still gets its answer within 3 s (the bot defers while the store waits) ...
        response = await ix.wait_response(timeout=5)
        assert response.deferred and response.latency_s < 3.0
        # 3. ... and the job is written once the lock goes, then made and delivered.
        result = await ix.wait_message(has_result, 30)
        waited = time.monotonic() - t0
        assert waited >= 2.9
        log.info("sqlite lock: deferred after %.2f s, result after %.2f s", response.latency_s, waited)
    finally:
        release.join()
        other.close()
    assert "a locked door" in result.text()
    assert await count_rows(bot.store) == 1
    assert (await eventually(lambda: delivered(bot, 1))).status == "done"


async def test_images_folder_not_writable_fails_the_job_with_a_message(fake_discord, start_bot, make_rel_bot,
                                                                      tmp_path):
    # Tests run as root, so chmod would not stop a write: the folder's parent is a regular FILE instead.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    fake = fake_discord
    bot = await started(start_bot, await make_rel_bot(engine={"images_dir": str(blocker / "images")}))
    alice = fake.add_user("alice")
    status = await final_status(await imagine(fake, alice, prompt="a painting", seed=8), "Failed")
    # 1. The user hears that the image could not be saved and who should act.
    assert "could not be saved" in status.content and "owner" in status.content
    job = await store_jobs.get_job(bot.store, 1)
    assert job.status == "failed" and "could not be saved" in job.error and not job.images
    # 2. The worker goes on (the next job meets the same disk and fails the same clean way).
    status2 = await final_status(await imagine(fake, alice, prompt="another painting", seed=9), "Failed")
    assert "could not be saved" in status2.content
    assert not any(has_result(m) for m in fake.messages)


def test_every_fault_test_is_in_the_reliability_doc():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "reliability.md").read_text(encoding="utf-8")
    names = [n for n in globals() if n.startswith("test_") and n != "test_every_fault_test_is_in_the_reliability_doc"]
    missing = [n for n in names if f"`{n}`" not in doc]
    assert not missing, f"docs/reliability.md's fault table lacks {missing}"
