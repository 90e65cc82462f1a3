"""Permissions and privacy through the real bot (issue 11, items 5–7): a role admin acts only on the jobs of their
own guild, DMs do not bypass channel or role restrictions, and /show re-posts another user's job only in the channel
where it was made. Every refusal is private and changes nothing.

The fake Discord has one guild; a job of another guild is a row written as the bot writes it for a command in
that guild (guild and channel ids the fake does not know), which is all the bot sees of it when a button or
/show names its id.
"""
from __future__ import annotations

import asyncio
import logging
from functools import partial
from pathlib import Path

from db import jobs as store_jobs
from db.records import JobOutput, NewJob
from tests.e2e.reliability_kit import *  # noqa: F401,F403 (fixtures and helpers)
from tests.e2e.reliability_kit import crafted_click, delivered, eventually, has_result, imagine, job_rows
from tests.e2e.refusals import private_answer, public_messages, refusal

log = logging.getLogger(__name__)

OTHER_GUILD, OTHER_CHANNEL = 7_000_000_000_000_001, 7_000_000_000_000_002


async def answer(fake, ix) -> str:
    return await fake.wait_until(lambda: private_answer(ix), 10, "an ephemeral answer")


async def seed_job(bot, user_id: int, prompt: str, *, guild_id, channel_id, done: bool) -> int:
    """A job row as the bot writes it for a command elsewhere (another guild, or a DM)."""
    job = await store_jobs.create_job(bot.store, NewJob(user_id=user_id, prompt=prompt, seed=3, steps=2, width=256,
                                                        height=256, guidance=3.5, guild_id=guild_id,
                                                        channel_id=channel_id))
    if done:
        await store_jobs.finish_job(bot.store, job.id, JobOutput(seeds=[3], images=[]))
    return job.id


# --- 5. a role admin is an admin of their own guild's jobs only ------------------------------------------------------

async def test_a_role_admin_acts_only_on_jobs_of_their_own_guild(fake_discord, start_bot, make_rel_bot):
    fake = fake_discord
    boss = fake.add_user("boss")                      # [discord] owner_ids: admin of every job
    mods = fake.add_role("mods")
    moderator = fake.add_user("moderator", [mods])    # [discord] admin_role_ids: admin of this guild's jobs
    bot = await start_bot(await make_rel_bot(discord={"owner_ids": [boss.id], "admin_role_ids": [mods.id]}))
    await bot.engines.wait_loaded()
    alice = fake.add_user("alice")
    # alice's jobs: one here (1), one in a DM (2), two in another guild (3 done, 4 still queued), one DM queued (5)
    here = await (await imagine(fake, alice, prompt="garden in this guild", seed=1)).wait_message(has_result, 30)
    await (await fake.slash(alice, "imagine", {"prompt": "secret dm sketch", "size": "256x256", "steps": 2},
                            dm=True)).wait_message(has_result, 30)
    other_done = await seed_job(bot, alice.id, "other guild portrait", guild_id=OTHER_GUILD,
                                channel_id=OTHER_CHANNEL, done=True)
    other_queued = await seed_job(bot, alice.id, "other guild queued", guild_id=OTHER_GUILD,
                                  channel_id=OTHER_CHANNEL, done=False)
    dm_queued = await seed_job(bot, alice.id, "dm queued", guild_id=None, channel_id=fake.dm_channel(alice).id,
                               done=False)
    assert (other_done, other_queued, dm_queued) == (3, 4, 5)
    for job_id in (1, 2):  # the delivery bookkeeping is written after the result appears: wait for it
        await eventually(partial(delivered, bot, job_id), 10, f"job {job_id} recorded as delivered")
    before = await job_rows(bot.store)
    # 1. /history of alice: the moderator sees this guild's job only; neither the DM prompts nor the other guild's.
    page = await (await fake.slash(moderator, "history", {"user": alice.id})).wait_message(
        lambda m: m.ephemeral and m.embeds)
    text = page.text()
    assert "garden in this guild" in text and "this server's jobs only" in text
    for hidden in ("secret dm sketch", "other guild", "dm queued"):
        assert hidden not in text, hidden
    # 2. /show, Delete and Cancel of jobs outside the moderator's guild: refused privately, nothing changes.
    refused = [
        await fake.slash(moderator, "show", {"job": 2}),
        await fake.slash(moderator, "show", {"job": other_done}),
        await crafted_click(fake, moderator, f"fluxbot:delete:{other_done}"),
        await crafted_click(fake, moderator, "fluxbot:delete:2"),
        await crafted_click(fake, moderator, f"fluxbot:cancel:{other_queued}"),
        await crafted_click(fake, moderator, f"fluxbot:cancel:{dm_queued}"),
    ]
    for ix in refused:
        assert "cannot be shown here" in (text := await refusal(fake, ix)) or "admin of its server" in text, text
    await asyncio.sleep(0.2)
    assert await job_rows(bot.store) == before
    assert not any("secret dm sketch" in m.text() for m in fake.messages if m.channel_id == fake.channel.id)
    # 3. In their own guild the moderator still may (from another channel too); the owner may everywhere.
    lounge = fake.add_channel("lounge")
    shown = await (await fake.slash(moderator, "show", {"job": 1}, channel=lounge)).wait_message(has_result, 30)
    assert "garden in this guild" in shown.text()
    everything = await (await fake.slash(boss, "history", {"user": alice.id})).wait_message(
        lambda m: m.ephemeral and m.embeds)
    assert "secret dm sketch" in everything.text() and "other guild portrait" in everything.text()
    assert "Job #4 cancelled" in await answer(fake, await crafted_click(fake, boss, f"fluxbot:cancel:{other_queued}"))
    delete = next(c for c in here.custom_ids if c.startswith("fluxbot:delete:"))
    assert "deleted" in await answer(fake, await fake.click(moderator, here, delete))


async def test_no_admin_skips_the_queue_cap_owners_only_by_config(fake_discord, start_bot, make_rel_bot,
                                                                  engine_faults):
    fake = fake_discord
    boss, mods = fake.add_user("boss"), fake.add_role("mods")
    moderator = fake.add_user("moderator", [mods])
    bot = await start_bot(await make_rel_bot(discord={"owner_ids": [boss.id], "admin_role_ids": [mods.id]},
                                       limits={"queue_cap": 1, "owners_skip_queue_caps": True}))
    await bot.engines.wait_loaded()
    alice = fake.add_user("alice")
    engine_faults.pause_at_step = 1  # job 1 holds the worker: the next job waits, and the queue (cap 1) is full
    await imagine(fake, alice, prompt="first", seed=1)
    await asyncio.to_thread(engine_faults.paused.wait, 30)
    await (await imagine(fake, alice, prompt="second", seed=2)).wait_message(lambda m: "Queued" in m.content)
    # The role admin is refused like anyone; the owner passes, because the config says so.
    assert "queue is full" in await refusal(fake, await imagine(fake, moderator, prompt="mod's", seed=3))
    owners = await imagine(fake, boss, prompt="owner's", seed=4)
    await owners.wait_message(lambda m: "Queued" in m.content)
    assert [j.prompt for j in await store_jobs.unfinished_jobs(bot.store)] == ["first", "second", "owner's"]
    engine_faults.release.set()


# --- 6. DMs do not bypass channel or role restrictions -----------------------------------------------------------------

async def test_dms_are_refused_while_roles_or_channels_are_restricted(fake_discord, start_bot, make_rel_bot):
    fake = fake_discord
    artists = fake.add_role("artists")
    bot = await start_bot(await make_rel_bot(discord={"allowed_role_ids": [artists.id]}))  # allow_dms keeps its default
    await bot.engines.wait_loaded()
    alice, mallory = fake.add_user("alice", [artists]), fake.add_user("mallory", in_guild=False)
    old = await seed_job(bot, mallory.id, "made before the restriction", guild_id=None,
                         channel_id=fake.dm_channel(mallory).id, done=True)
    before = await job_rows(bot.store)
    ways_in = [
        await fake.slash(mallory, "imagine", {"prompt": "a fox", "size": "256x256", "steps": 1}, dm=True),
        await fake.slash(alice, "imagine", {"prompt": "a fox", "size": "256x256", "steps": 1}, dm=True),
        await crafted_click(fake, mallory, f"fluxbot:reroll:{old}", channel=fake.dm_channel(mallory)),
    ]
    for ix in ways_in:
        assert "not available in direct messages" in await refusal(fake, ix)
    await asyncio.sleep(0.2)
    assert await job_rows(bot.store) == before


async def test_the_owner_may_allow_dms_explicitly_while_restricted(fake_discord, start_bot, make_rel_bot):
    fake = fake_discord
    artists = fake.add_role("artists")
    studio = fake.add_channel("studio")
    bot = await start_bot(await make_rel_bot(discord={"allowed_role_ids": [artists.id],
                                                      "allowed_channel_ids": [studio.id],
                                                      "allow_dms_when_restricted": True}))
    await bot.engines.wait_loaded()
    dm_user = fake.add_user("dm-user", in_guild=False)
    ix = await fake.slash(dm_user, "imagine", {"prompt": "a fox", "size": "256x256", "steps": 1}, dm=True)
    assert (await ix.wait_message(has_result, 30)).channel_id == fake.dm_channel(dm_user).id


# --- 7. /show re-posts another user's job only where it was made -----------------------------------------------------

async def test_show_of_anothers_job_only_in_its_channel_whether_or_not_its_file_exists(fake_discord, start_bot,
                                                                                        make_rel_bot):
    fake = fake_discord
    bot = await start_bot(await make_rel_bot())
    await bot.engines.wait_loaded()
    private = fake.add_channel("private")
    alice, mallory = fake.add_user("alice"), fake.add_user("mallory")
    made = await (await fake.slash(alice, "imagine", {"prompt": "a private sketch", "size": "256x256", "steps": 1,
                                                      "seed": 5}, channel=private)).wait_message(has_result, 30)
    assert made.channel_id == private.id
    png = Path((await store_jobs.get_job(bot.store, 1)).images[0].path)
    await eventually(partial(delivered, bot, 1), 10, "job 1 recorded as delivered")
    before = await job_rows(bot.store)
    # 1. mallory, in another channel of the same guild and in a DM: refused privately, file on disk or not.
    for pruned in (False, True):
        if pruned:
            png.unlink()
        for where in ({}, {"dm": True}):
            ix = await fake.slash(mallory, "show", {"job": 1}, **where)
            assert "Job #1 cannot be shown here" in await refusal(fake, ix)
            assert public_messages(ix) == []
    await asyncio.sleep(0.2)
    assert await job_rows(bot.store) == before  # no `show` job was started for the pruned file
    assert not any("a private sketch" in m.text() for m in fake.messages if m.channel_id != private.id)
    # 2. In the channel where it was made, anyone may (it is pruned now: made again, same seed).
    again = await (await fake.slash(mallory, "show", {"job": 1}, channel=private)).wait_message(has_result, 30)
    assert "a private sketch" in again.text() and again.channel_id == private.id
    # 3. alice may show her own job anywhere.
    mine = await (await fake.slash(alice, "show", {"job": 1})).wait_message(has_result, 30)
    assert mine.channel_id == fake.channel.id


async def test_show_respects_allowed_channels_even_when_the_file_exists(fake_discord, start_bot, make_rel_bot):
    fake = fake_discord
    studio = fake.add_channel("studio")
    bot = await start_bot(await make_rel_bot(discord={"allowed_channel_ids": [studio.id]}))
    await bot.engines.wait_loaded()
    alice = fake.add_user("alice")
    await (await fake.slash(alice, "imagine", {"prompt": "a studio still life", "size": "256x256", "steps": 1},
                            channel=studio)).wait_message(has_result, 30)
    assert Path((await store_jobs.get_job(bot.store, 1)).images[0].path).is_file()
    ix = await fake.slash(alice, "show", {"job": 1})  # in #general, where generating is not enabled
    assert "not enabled in this channel" in await refusal(fake, ix)
    await (await fake.slash(alice, "show", {"job": 1}, channel=studio)).wait_message(has_result, 30)
