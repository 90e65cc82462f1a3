"""The real FluxBot (discord.py client, tiny-random engine, SQLite) against the fake Discord on loopback.

The tests of what the engine side does (a job's run, its progress, cancel, the queue's order and positions, restart
recovery, an engine error, the buttons that make new jobs) run on both `[engine] backend`s (`@on_both_backends`,
tests/support/backends.py): workers in the bot's process, and the workers of a local Ray instance."""
from __future__ import annotations

import asyncio

import pytest

from bot.app import build_bot
from bot.client import FluxBot
from bot.config import Config
from db import jobs as store_jobs
from tests.e2e.refusals import refusal
from tests.e2e.reliability_kit import (count_rows, delivered, edit_form_id, eventually, gate,  # noqa: F401 (fixtures)
                                       has_result, imagine, job_buttons, rel_config)
from tests.support.backends import backend, on_both_backends  # noqa: F401 (backend: a fixture)


@pytest.fixture
def make_bot(rel_config, tiny_engine, gate, backend):
    """FluxBot over the shared tiny engine (not closed with the bot), on the test's `backend`. `gated=True`: the
    engine loads only once the test sets `gate`, so that jobs stay queued meanwhile; `step_s`: a pause after every
    step; `failing`: every job is refused by the engine."""
    async def _make(config: Config | None = None, *, gated: bool = False, step_s: float = 0.0,
                    failing: bool = False, **discord_overrides) -> FluxBot:
        loader = await backend.loader(tiny_engine, gate=gate if gated else None, step_s=step_s, failing=failing)
        return await build_bot(backend.configure(config or rel_config(discord=discord_overrides)), engine_loader=loader,
                               close_engines=False)
    return _make


@pytest.fixture
async def running(fake_discord, start_bot, make_bot, backend):
    """A started bot with its engine loaded, on the test's backend."""
    bot = await start_bot(await make_bot())
    assert await bot.engines.wait_loaded() == 1
    assert backend.serves(bot)
    return bot


async def result_of(ix, timeout: float = 30.0):
    return await ix.wait_message(has_result, timeout)


# --- /imagine ---------------------------------------------------------------------------------------------------

@on_both_backends
async def test_imagine_defers_shows_status_and_delivers_png_embed_and_buttons(fake_discord, running):
    fake, bot = fake_discord, running
    alice = fake.add_user("alice")
    ix = await imagine(fake, alice, prompt="a red fox in snow", seed=42)
    resp = await ix.wait_response()
    assert resp.deferred and not resp.ephemeral
    result = await result_of(ix)
    # 1. The status message showed the job, then its end.
    status = await ix.wait_message(lambda m: m.kind == "response" and "Done" in m.content)
    assert "job 1" in status.content and "a red fox in snow" in status.content
    assert any("Queued, position 1" in h.content or "Generating" in h.content for h in status.history)
    assert status.custom_ids == []  # no Cancel button once done
    # 2. The result: one 64×64 PNG, the embed with the recipe, four buttons with the job id.
    assert [a.image_size for a in result.attachments] == [(256, 256)]
    text = result.text()
    for expected in ("a red fox in snow", "Seed 42", "Steps 2", "Size 256×256", "Guidance 3.5", "Job #1",
                     "tiny-random"):
        assert expected in text, (expected, text)
    assert result.custom_ids == job_buttons(bot, 1)
    assert f"<@{alice.id}>" in result.content
    # 3. The record knows where the result went.
    job = await eventually(lambda: delivered(bot, 1))
    assert job.status == "done" and job.result_message_id == result.id and job.status_message_id == status.id


# --- buttons ------------------------------------------------------------------------------------------------------

@on_both_backends
async def test_reroll_vary_and_edit_make_new_jobs_owned_by_the_presser(fake_discord, running):
    fake, bot = fake_discord, running
    alice, bob = fake.add_user("alice"), fake.add_user("bob")
    first = await result_of(await imagine(fake, alice, prompt="a lighthouse", seed=1000))
    # 1. 🎲 Reroll by bob: same recipe, a new seed, bob's job, parent 1.
    ix = await fake.click(bob, first, "Reroll")
    assert (await ix.wait_response()).deferred
    rerolled = await result_of(ix)
    job2 = await store_jobs.get_job(bot.store, 2)
    assert (job2.kind, job2.parent_id, job2.user_id, job2.prompt, job2.steps) == ("reroll", 1, bob.id, "a lighthouse", 2)
    assert job2.seed != 1000 and f"Seed {job2.seed}" in rerolled.text()
    assert rerolled.custom_ids[0] == job_buttons(bot, 2)[0]
    # 2. 🔀 Vary: the same seed, a variation seed at a subtle strength.
    vary = await result_of(await fake.click(alice, first, "Vary (Subtle)"))
    job3 = await store_jobs.get_job(bot.store, 3)
    assert (job3.kind, job3.parent_id, job3.seed, job3.variation_strength) == ("vary", 1, 1000, 0.15)
    assert job3.variation_seed is not None and "Variation" in vary.text()
    # 3. ✏️ Edit: a form prefilled with prompt, seed and steps; its submit starts job 4. Two people may
    #    have a form of the same job open at once.
    opener = await fake.click(bob, first, "Edit")
    response = await opener.wait_response()
    assert response.modal_custom_id == edit_form_id(bot, 1, opener.id)
    assert "a lighthouse" in str(response.data) and "1000" in str(response.data)
    other = await fake.click(alice, first, "Edit")
    await other.wait_response()
    ix = await fake.submit_modal(bob, edit_form_id(bot, 1, opener.id),
                                 {"prompt": "a lighthouse at night", "seed": "7", "steps": "1"})
    edited = await result_of(ix)
    job4 = await store_jobs.get_job(bot.store, 4)
    assert (job4.kind, job4.parent_id, job4.user_id, job4.prompt, job4.seed, job4.steps) == \
        ("edit", 1, bob.id, "a lighthouse at night", 7, 1)
    assert "a lighthouse at night" in edited.text()
    await result_of(await fake.submit_modal(alice, edit_form_id(bot, 1, other.id), {"prompt": "a lighthouse"}))
    job5 = await store_jobs.get_job(bot.store, 5)
    assert (job5.kind, job5.user_id, job5.seed, job5.steps) == ("edit", alice.id, 1000, 2)


@on_both_backends
async def test_one_users_reroll_and_imagine_sent_back_to_back_keep_their_order(fake_discord, running):
    # 🎲 reads its parent job before it is admitted; an /imagine of the same user sent right after it (well
    # under a millisecond later here) used to be admitted first and so got the smaller job id and ran first.
    fake, bot = fake_discord, running
    alice = fake.add_user("alice")
    first = await result_of(await imagine(fake, alice, prompt="a harbour", seed=1))
    pairs = []
    for round_ in range(2):  # 4 jobs at once: within alice's limit of 5 unfinished
        click = await fake.click(alice, first, "Reroll")
        slash = await imagine(fake, alice, prompt=f"a boat {round_}", seed=2)
        pairs.append((click, slash))
    # Each pair: the reroll (sent first) has the smaller job id, and its result comes first.
    for round_, (click, slash) in enumerate(pairs):
        rerolled, imagined = await result_of(click), await result_of(slash)
        reroll_id, imagine_id = 2 + 2 * round_, 3 + 2 * round_
        assert rerolled.custom_ids[0] == job_buttons(bot, reroll_id)[0], (round_, rerolled.custom_ids)
        assert imagined.custom_ids[0] == job_buttons(bot, imagine_id)[0], (round_, imagined.custom_ids)
        assert rerolled.id < imagined.id
    kinds = [(await store_jobs.get_job(bot.store, i)).kind for i in range(2, 6)]
    assert kinds == ["reroll", "imagine"] * 2


async def test_delete_refused_for_a_stranger_and_done_for_the_owner(fake_discord, running):
    fake, bot = fake_discord, running
    alice, mallory = fake.add_user("alice"), fake.add_user("mallory")
    result = await result_of(await imagine(fake, alice, prompt="a cat", seed=3))
    # 1. A stranger: ephemeral refusal, the message stays.
    ix = await fake.click(mallory, result, "Delete")
    assert "Only the person who asked for this job or an admin of its server may delete it" in await refusal(fake, ix)
    assert not result.deleted and (await store_jobs.get_job(bot.store, 1)).deleted_at is None
    # 2. The owner: the message goes, the record stays, marked deleted.
    ix = await fake.click(alice, result, "Delete")
    await ix.wait_message(lambda m: m.ephemeral and "deleted" in m.content)
    assert result.deleted
    job = await store_jobs.get_job(bot.store, 1)
    assert job.deleted_at is not None and job.status == "done"


async def test_an_admin_may_delete_any_job(fake_discord, start_bot, make_bot):
    fake = fake_discord
    boss = fake.add_user("boss")
    bot = await start_bot(await make_bot(owner_ids=[boss.id]))
    await bot.engines.wait_loaded()
    alice = fake.add_user("alice")
    result = await result_of(await imagine(fake, alice, prompt="a cat", seed=3))
    ix = await fake.click(boss, result, "Delete")
    await ix.wait_message(lambda m: m.ephemeral and "deleted" in m.content)
    assert result.deleted


@on_both_backends
async def test_cancel_of_a_queued_job_by_its_owner_only(fake_discord, start_bot, make_bot, gate):
    fake = fake_discord
    bot = await start_bot(await make_bot(gated=True))
    alice, bob = fake.add_user("alice"), fake.add_user("bob")
    ix1 = await imagine(fake, alice, prompt="first", seed=1)
    ix2 = await imagine(fake, alice, prompt="second", seed=2)
    status2 = await ix2.wait_message(lambda m: "Queued, position 2" in m.content)
    assert status2.custom_ids == job_buttons(bot, 2, ["cancel"])
    # 1. Bob may not cancel alice's job.
    ix = await fake.click(bob, status2, "Cancel")
    assert "Only the person who asked" in await refusal(fake, ix)
    # 2. Alice may: job 2 leaves the queue, and its status message says so.
    ix = await fake.click(alice, status2, "Cancel")
    assert "Job #2 cancelled" in (await ix.wait_message(lambda m: m.ephemeral)).content
    await ix2.wait_message(lambda m: m.kind == "response" and "Cancelled" in m.content)
    assert (await store_jobs.get_job(bot.store, 2)).status == "cancelled"
    # 3. The other job still runs once the engine is there; the cancelled one never does.
    gate.set()
    await result_of(ix1)
    await asyncio.sleep(0.3)
    assert (await store_jobs.get_job(bot.store, 2)).status == "cancelled"
    assert not any(has_result(m) for m in ix2.messages)


@on_both_backends
async def test_two_users_jobs_run_in_fifo_order(fake_discord, start_bot, make_bot, gate):
    fake = fake_discord
    bot = await start_bot(await make_bot(gated=True))
    alice, bob = fake.add_user("alice"), fake.add_user("bob")
    order = [(alice, "a1"), (bob, "b1"), (alice, "a2"), (bob, "b2")]
    ixs = [await imagine(fake, user, prompt=prompt, seed=5) for user, prompt in order]
    last = await ixs[3].wait_message(lambda m: "Queued, position 4" in m.content)
    assert "b2" in last.content
    gate.set()
    results = [await result_of(ix) for ix in ixs]
    jobs = [await store_jobs.get_job(bot.store, i) for i in (1, 2, 3, 4)]
    assert [j.prompt for j in sorted(jobs, key=lambda j: j.started_at)] == ["a1", "b1", "a2", "b2"]
    assert [j.user_id for j in jobs] == [alice.id, bob.id, alice.id, bob.id]
    assert all(r.attachments for r in results)


# --- refusals -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, says", [
    ({"prompt": "a fox", "steps": 0}, "Steps must be between 1 and 50, not 0"),
    ({"prompt": "a fox", "steps": 999}, "Steps must be between 1 and 50, not 999"),
    ({"prompt": "a fox", "size": "1024x1024"}, "Size '1024x1024' is not offered"),
    ({"prompt": ""}, "The prompt is empty"),
    ({"prompt": "x" * 5000}, "5000 characters long; the limit is 1000"),
    ({"prompt": "a FR0G on a log"}, "does not accept ('frog')"),
])
async def test_bad_inputs_get_an_ephemeral_message_and_no_job(fake_discord, start_bot, make_bot, options, says):
    # Discord's own option checks are bypassed (validate=False), as a crafted request would.
    fake = fake_discord
    bot = await start_bot(await make_bot(banned_words=["frog"]))
    alice = fake.add_user("alice")
    ix = await fake.slash(alice, "imagine", {"size": "256x256", **options}, validate=False)
    text = await refusal(fake, ix)
    assert says in text, text
    assert await count_rows(bot.store) == 0
    assert not [m for m in fake.messages if not m.ephemeral]


async def test_restricted_channel_and_role_refuse_before_anything_is_queued(fake_discord, start_bot, make_bot):
    fake = fake_discord
    artists = fake.add_role("artists")
    studio = fake.add_channel("studio")
    bot = await start_bot(await make_bot(allowed_channel_ids=[studio.id], allowed_role_ids=[artists.id],
                                         allow_dms=False))
    await bot.engines.wait_loaded()
    alice, bob = fake.add_user("alice", [artists]), fake.add_user("bob")
    cases = [(alice, {}, "not enabled in this channel"), (bob, {"channel": studio}, "roles allowed"),
             (alice, {"dm": True}, "direct messages")]
    for user, where, says in cases:
        ix = await fake.slash(user, "imagine", {"prompt": "a fox", "size": "256x256", "steps": 1}, **where)
        assert says in await refusal(fake, ix)
    assert await count_rows(bot.store) == 0
    ok = await fake.slash(alice, "imagine", {"prompt": "a fox", "size": "256x256", "steps": 1}, channel=studio)
    await result_of(ok)


# --- history, show, queue ------------------------------------------------------------------------------------------

async def add_done_jobs(bot, user_id: int, n: int) -> None:
    from db.records import NewJob
    for i in range(n):
        await store_jobs.create_job(bot.store, NewJob(user_id=user_id, prompt=f"old prompt {i}", seed=100 + i,
                                                      steps=2, width=256, height=256, guidance=3.5))


async def test_history_pages_newest_first_and_only_admins_see_others(fake_discord, running):
    fake, bot = fake_discord, running
    alice, bob = fake.add_user("alice"), fake.add_user("bob")
    await add_done_jobs(bot, alice.id, 12)
    await add_done_jobs(bot, bob.id, 1)
    # 1. Page 1: the ten newest, with paging buttons.
    ix = await fake.slash(alice, "history")
    page1 = await ix.wait_message(lambda m: m.ephemeral and m.embeds)
    text = page1.text()
    assert "old prompt 11" in text and "old prompt 2" in text and "old prompt 1\n" not in text + "\n"
    assert "Page 1/2" in text and "seed 111" in text
    assert text.index("old prompt 11") < text.index("old prompt 10")
    # 2. Older ▶ turns the same message to page 2.
    ix = await fake.click(alice, page1, "Older ▶")
    await ix.wait_response()
    assert "Page 2/2" in page1.text() and "old prompt 0" in page1.text() and "old prompt 11" not in page1.text()
    # 3. Someone else's history: refused for bob.
    ix = await fake.slash(bob, "history", {"user": alice.id})
    assert "Only admins" in await refusal(fake, ix)


@on_both_backends
async def test_show_reposts_from_disk_and_regenerates_the_same_pixels(fake_discord, running):
    import io
    from pathlib import Path

    import numpy as np
    from PIL import Image

    fake, bot = fake_discord, running
    alice = fake.add_user("alice")
    original = await result_of(await imagine(fake, alice, prompt="a castle", seed=77))
    pixels = np.asarray(Image.open(io.BytesIO(original.attachments[0].data)))
    # 1. Kept on disk: posted again with its buttons, no new job.
    shown = await result_of(await fake.slash(alice, "show", {"job": 1}))
    assert shown.custom_ids[0] == job_buttons(bot, 1)[0] and "a castle" in shown.text()
    assert shown.attachments[0].data == original.attachments[0].data
    assert await count_rows(bot.store) == 1
    # 2. Pruned from disk: regenerated from the record (a `show` job), same pixels.
    for image in (await store_jobs.get_job(bot.store, 1)).images:
        Path(image.path).unlink()
    again = await result_of(await fake.slash(alice, "show", {"job": 1}))
    job2 = await store_jobs.get_job(bot.store, 2)
    assert (job2.kind, job2.parent_id, job2.seed) == ("show", 1, 77)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(again.attachments[0].data))), pixels)
    # 3. A job that does not exist.
    ix = await fake.slash(alice, "show", {"job": 999})
    assert "does not exist" in await refusal(fake, ix)


@on_both_backends
async def test_queue_lists_waiting_jobs_and_marks_the_callers(fake_discord, start_bot, make_bot, gate):
    fake = fake_discord
    await start_bot(await make_bot(gated=True))
    alice, bob = fake.add_user("alice"), fake.add_user("bob")
    for user in (alice, bob, alice):  # each is queued once its status line says so (a defer can come first)
        await (await imagine(fake, user, prompt="p", seed=1)).wait_message(lambda m: "Queued" in m.content)
    ix = await fake.slash(bob, "queue")
    msg = await ix.wait_message(lambda m: m.ephemeral and m.embeds)
    text = msg.text()
    assert "3 waiting" in text and "Yours: #2" in text
    assert text.index("job 1") < text.index("job 2") < text.index("job 3")
    assert text.count("← yours") == 1


# --- restarts and delivery ------------------------------------------------------------------------------------------

@on_both_backends
async def test_old_buttons_work_after_a_restart(fake_discord, start_bot, stop_bot, make_bot, rel_config):
    fake = fake_discord
    config = rel_config()
    alice, bob = fake.add_user("alice"), fake.add_user("bob")
    first_bot = await start_bot(await make_bot(config))
    await first_bot.engines.wait_loaded()
    old = await result_of(await imagine(fake, alice, prompt="a windmill", seed=9))
    form = await fake.click(alice, old, "Edit")
    await form.wait_response()
    await stop_bot(first_bot)
    # A new process: a new FluxBot over the same database; the old message's buttons still work.
    second_bot = await start_bot(await make_bot(config))
    await second_bot.engines.wait_loaded()
    rerolled = await result_of(await fake.click(bob, old, "Reroll"))
    job2 = await store_jobs.get_job(second_bot.store, 2)
    assert (job2.parent_id, job2.user_id, job2.prompt) == (1, bob.id, "a windmill")
    assert rerolled.custom_ids[0] == job_buttons(second_bot, 2)[0]
    edited = await result_of(await fake.submit_modal(alice, edit_form_id(second_bot, 1, form.id),
                                                     {"prompt": "a windmill at dusk"}))
    assert "a windmill at dusk" in edited.text()
    ix = await fake.click(alice, old, "Delete")
    await ix.wait_message(lambda m: m.ephemeral and "deleted" in m.content)
    assert old.deleted


@on_both_backends
async def test_unfinished_jobs_are_requeued_and_their_owners_told(fake_discord, start_bot, stop_bot, make_bot,
                                                                  rel_config, gate):
    fake = fake_discord
    config = rel_config()
    alice = fake.add_user("alice")
    first_bot = await start_bot(await make_bot(config, gated=True))  # its engine never loads: the job stays queued
    ix = await imagine(fake, alice, prompt="a waiting ship", seed=4)
    await ix.wait_message(lambda m: "Queued" in m.content)
    await stop_bot(first_bot)
    fake.expire_tokens()  # the old reply can no longer be edited or followed up
    gate.set()
    second_bot = await start_bot(await make_bot(config))
    notice = await fake.wait_message(lambda m: m.kind == "channel" and "back in the queue" in m.content)
    assert f"<@{alice.id}>" in notice.content and "job #1" in notice.content
    result = await fake.wait_message(lambda m: m.kind == "channel" and has_result(m), timeout=30)
    assert f"<@{alice.id}>" in result.content and "a waiting ship" in result.text()
    done = await fake.wait_until(lambda: "Done" in notice.content and notice, 10, "the notice to show Done")
    assert done.custom_ids == []
    assert (await eventually(lambda: delivered(second_bot, 1))).result_message_id == result.id


async def test_expired_token_delivers_by_channel_message_and_retries_5xx(fake_discord, start_bot, make_bot, gate):
    fake = fake_discord
    bot = await start_bot(await make_bot(gated=True))
    bot.deliverer.backoff_s = 0.01
    alice = fake.add_user("alice")
    ix = await imagine(fake, alice, prompt="a late train", seed=8)
    await ix.wait_message(lambda m: "Queued" in m.content)
    fake.expire_tokens(ix)  # as if the job waited longer than 15 minutes
    fault = fake.fail(r"^/channels/\d+/messages$", 503, times=2, method="POST")
    gate.set()
    result = await fake.wait_message(lambda m: m.kind == "channel" and has_result(m), timeout=30)
    assert f"<@{alice.id}>" in result.content and result.custom_ids[0] == job_buttons(bot, 1)[0]
    assert fault.hits == 2
    job = await eventually(lambda: delivered(bot, 1))
    assert job.result_message_id == result.id


async def test_undeliverable_result_stays_done_and_show_finds_it(fake_discord, start_bot, make_bot, gate):
    fake = fake_discord
    bot = await start_bot(await make_bot(gated=True))
    bot.deliverer.backoff_s = 0.01
    alice = fake.add_user("alice")
    ix = await imagine(fake, alice, prompt="a lost letter", seed=8)
    await ix.wait_message(lambda m: "Queued" in m.content)
    fake.expire_tokens(ix)
    fake.fail(r"^/channels/\d+/messages$", 403, times=10, method="POST")
    gate.set()
    await fake.wait_until(lambda: bot.tracker.tracked() == [] and fake.requests_to(r"/channels/\d+/messages$"),
                          30, "the delivery attempt")
    job = await store_jobs.get_job(bot.store, 1)
    assert job.status == "done" and job.delivered_at is None
    fake.faults = type(fake.faults)()
    shown = await result_of(await fake.slash(alice, "show", {"job": 1}))
    assert "a lost letter" in shown.text()


# --- status edits, running cancel, errors ----------------------------------------------------------------------

@on_both_backends
async def test_status_shows_steps_and_is_edited_at_most_once_per_interval(fake_discord, start_bot, make_bot):
    fake = fake_discord
    bot = await start_bot(await make_bot(step_s=0.1))  # 10 steps ≈ 1 s of running, 0.5 s between edits
    await bot.engines.wait_loaded()
    alice = fake.add_user("alice")
    ix = await imagine(fake, alice, prompt="a slow river", seed=1, steps=10)
    await result_of(ix)
    status = await ix.wait_message(lambda m: m.kind == "response" and "Done" in m.content)
    versions = status.history[1:] + [status.state]  # [0] is the "thinking…" placeholder
    assert any("Generating, step" in v.content and "/10" in v.content for v in versions), versions
    gaps = [b.at - a.at for a, b in zip(versions, versions[1:])]
    assert all(g >= 0.45 for g in gaps), gaps  # 10 progress events, yet at most one edit per 0.5 s


@on_both_backends
async def test_cancel_of_a_running_job_stops_it(fake_discord, start_bot, make_bot):
    fake = fake_discord
    bot = await start_bot(await make_bot(step_s=0.2))
    await bot.engines.wait_loaded()
    alice = fake.add_user("alice")
    ix = await imagine(fake, alice, prompt="a long night", seed=1, steps=30)
    status = await ix.wait_message(lambda m: "Generating" in m.content)
    click = await fake.click(alice, status, "Cancel")
    assert "stops at its next step" in (await click.wait_message(lambda m: m.ephemeral)).content
    await ix.wait_message(lambda m: m.kind == "response" and "Cancelled" in m.content)
    assert (await store_jobs.get_job(bot.store, 1)).status == "cancelled"
    assert not any(has_result(m) for m in ix.messages)


async def test_unexpected_errors_give_a_reference_and_never_show_the_token(fake_discord, running, caplog,
                                                                          monkeypatch):
    fake, bot = fake_discord, running
    alice = fake.add_user("alice")
    result = await result_of(await imagine(fake, alice, prompt="a tree", seed=1))

    # 1. A slash command that crashes: one short ephemeral line with a reference; the log has the trace.
    def broken_waiting():
        raise RuntimeError("queue exploded")
    monkeypatch.setattr(bot.queue, "waiting", broken_waiting)
    ix = await fake.slash(alice, "queue")
    text = (await ix.wait_response()).data["content"]
    assert text.startswith("Something went wrong on the bot's side (ref ") and "exploded" not in text
    ref = text.split("(ref ")[1][:6]
    assert any(ref in r.getMessage() and r.exc_info for r in caplog.records)

    # 2. A button that crashes: the same, through the button's own handler (JobButton.callback → its feature).
    async def broken_reroll(interaction, ref):
        raise RuntimeError("reroll exploded")
    monkeypatch.setitem(bot.job_buttons, "reroll", broken_reroll)
    ix = await fake.click(alice, result, "Reroll")
    assert "Something went wrong" in (await ix.wait_message(lambda m: m.ephemeral)).content
    assert any("reroll exploded" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)

    # 3. The bot token and interaction tokens appear in no log line.
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert fake.token not in logged
    assert not any(i.token in logged for i in fake.interactions.values())


# --- more entry points ------------------------------------------------------------------------------------------

async def test_guild_sync_modal_checks_and_admin_history(fake_discord, start_bot, make_bot):
    fake = fake_discord
    boss = fake.add_user("boss")
    bot = await start_bot(await make_bot(guild_ids=[fake.guild_id], owner_ids=[boss.id]))
    await bot.engines.wait_loaded()
    # 1. Commands went to the configured guild at once (and not globally).
    assert {"imagine", "show", "history", "queue"} <= set(fake.commands_for(fake.guild_id))
    assert not fake.global_commands
    alice = fake.add_user("alice")
    result = await result_of(await imagine(fake, alice, prompt="a guild fox", seed=2))
    # 2. The Edit form's values are checked like the command's.
    opener = await fake.click(alice, result, "Edit")
    await opener.wait_response()
    ix = await fake.submit_modal(alice, edit_form_id(bot, 1, opener.id),
                                 {"prompt": "a fox", "seed": "1", "steps": "lots"})
    assert "Steps must be a whole number" in await refusal(fake, ix)
    assert await count_rows(bot.store) == 1
    # 3. An admin may read alice's history.
    ix = await fake.slash(boss, "history", {"user": alice.id})
    page = await ix.wait_message(lambda m: m.ephemeral and m.embeds)
    assert "a guild fox" in page.text()


@on_both_backends
async def test_a_dm_request_is_answered_in_the_dm(fake_discord, running):
    fake, bot = fake_discord, running
    alice = fake.add_user("alice")
    ix = await fake.slash(alice, "imagine", {"prompt": "a dm fox", "seed": 2, "steps": 1, "size": "512x256",
                                             "count": 2}, dm=True)
    result = await result_of(ix)
    assert result.channel_id == fake.dm_channel(alice).id
    assert [a.image_size for a in result.attachments] == [(512, 256), (512, 256)]
    assert "Seeds 2, 3" in result.text()
    assert (await store_jobs.get_job(bot.store, 1)).guild_id is None


@on_both_backends
async def test_a_failed_job_says_why_in_its_status_or_in_the_channel(fake_discord, start_bot, make_bot, gate):
    fake = fake_discord
    bot = await start_bot(await make_bot(failing=True, gated=True))
    alice = fake.add_user("alice")
    fresh = await imagine(fake, alice, prompt="doomed", seed=1)
    await fresh.wait_message(lambda m: "Queued" in m.content)
    late = await imagine(fake, alice, prompt="doomed later", seed=2)
    await late.wait_message(lambda m: "Queued" in m.content)
    fake.expire_tokens(late)
    gate.set()
    # 1. While the token lives: the status reply says why.
    status = await fresh.wait_message(lambda m: m.kind == "response" and "Failed" in m.content)
    assert "the GPU fell off the bus" in status.content and status.custom_ids == []
    # 2. Past it: a channel message to the requester.
    notice = await fake.wait_message(lambda m: m.kind == "channel" and "failed" in m.content)
    assert f"<@{alice.id}>" in notice.content and "Job #2" in notice.content and "fell off the bus" in notice.content
    assert [(await store_jobs.get_job(bot.store, i)).status for i in (1, 2)] == ["failed", "failed"]


async def test_an_image_over_the_upload_limit_is_left_out_with_a_note(fake_discord, running):
    fake, bot = fake_discord, running
    alice = fake.add_user("alice")
    first = await result_of(await imagine(fake, alice, prompt="a busy market", seed=11, size="512x256"))
    size = first.attachments[0].size
    fake.attachment_size_limit = size - 1  # sent with every new interaction
    ix = await imagine(fake, alice, prompt="a busy market", seed=11, size="512x256")
    note = await ix.wait_message(lambda m: "upload limit" in m.content, 60)
    assert note.attachments == [] and note.embeds and note.custom_ids[0] == job_buttons(bot, 2)[0]
    assert (await eventually(lambda: delivered(bot, 2))).status == "done"
