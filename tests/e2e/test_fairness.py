"""Fairness through the real bot (issue 11, item 8): jobs are taken round-robin across users (first come, first
served within one user), the positions users are shown are the order the worker follows, and a guild's share
of the queue can be capped.

The backlog test runs on both `[engine] backend`s (tests/support/backends.py): with Ray, the job is paused inside
the engine actor's DiT and the test sees and releases the pause through files (`RemoteFaults`). The guild cap is
decided when a job is admitted, before any engine: local workers only.
"""
from __future__ import annotations

import asyncio
import logging
import re

from db import jobs as store_jobs
from tests.e2e.reliability_kit import *  # noqa: F401,F403 (fixtures and helpers)
from tests.e2e.reliability_kit import count_rows, has_result, imagine
from tests.e2e.refusals import refusal
from tests.support.backends import backend, backend_bot, backend_faults, on_both_backends  # noqa: F401 (fixtures)

log = logging.getLogger(__name__)


def queued_at(position: int):
    return lambda m: f"Queued, position {position}" in m.content


@on_both_backends
async def test_a_users_backlog_does_not_hold_up_the_next_user(fake_discord, start_bot, backend, backend_bot,
                                                              backend_faults):
    fake, engine_faults = fake_discord, backend_faults
    bot = await start_bot(await backend_bot())
    await bot.engines.wait_loaded()
    assert backend.serves(bot)
    alice, bob = fake.add_user("alice"), fake.add_user("bob")
    # 1. alice's first job holds the worker; she sends two more, then bob sends one.
    engine_faults.pause_at_step = 1
    first = await imagine(fake, alice, prompt="a1", seed=1)
    await asyncio.to_thread(engine_faults.paused.wait, 30)
    a2 = await imagine(fake, alice, prompt="a2", seed=2)
    await a2.wait_message(queued_at(1))
    a3 = await imagine(fake, alice, prompt="a3", seed=3)
    await a3.wait_message(queued_at(2))
    b1 = await imagine(fake, bob, prompt="b1", seed=4)
    # 2. bob waits for the running job only, not for alice's backlog; alice's lines move back one place.
    await b1.wait_message(queued_at(1))
    await a2.wait_message(queued_at(2))
    await a3.wait_message(queued_at(3))
    listing = (await (await fake.slash(bob, "queue")).wait_message(lambda m: m.ephemeral and m.embeds)).text()
    assert listing.index("job 4") < listing.index("job 2") < listing.index("job 3")
    etas = [float(x) for x in re.findall(r"`#\d+` job \d+ · <@\d+> · ~([\d.]+) s", listing)]
    assert len(etas) == 3 and etas[0] < etas[1] < etas[2], listing  # ETAs grow along the order shown
    # 3. The worker follows the order they were shown.
    engine_faults.release.set()
    for ix in (first, a2, a3, b1):
        await ix.wait_message(has_result, 60)
    jobs = [await store_jobs.get_job(bot.store, i) for i in (1, 2, 3, 4)]
    assert [j.prompt for j in sorted(jobs, key=lambda j: j.started_at)] == ["a1", "b1", "a2", "a3"]


async def test_a_guild_cap_refuses_more_jobs_from_that_guild_only(fake_discord, start_bot, make_rel_bot,
                                                                 engine_faults):
    fake = fake_discord
    boss = fake.add_user("boss")
    bot = await start_bot(await make_rel_bot(discord={"owner_ids": [boss.id]}, limits={"max_unfinished_per_guild": 2}))
    await bot.engines.wait_loaded()
    alice, bob = fake.add_user("alice"), fake.add_user("bob")
    engine_faults.pause_at_step = 1
    first = await imagine(fake, alice, prompt="one", seed=1)
    await asyncio.to_thread(engine_faults.paused.wait, 30)
    await (await imagine(fake, bob, prompt="two", seed=2)).wait_message(queued_at(1))
    before = await count_rows(bot.store)
    # 1. The guild has 2 unfinished jobs: a third is refused privately for anyone, the owner too (by default).
    for user in (bob, alice, boss):
        text = await refusal(fake, await imagine(fake, user, prompt="three", seed=3))
        assert "This server has 2 unfinished job(s) already (the limit is 2)" in text, text
    assert await count_rows(bot.store) == before
    # 2. DMs are another share: bob's DM request is queued.
    dm = await fake.slash(bob, "imagine", {"prompt": "in a dm", "size": "256x256", "steps": 2}, dm=True)
    await dm.wait_message(lambda m: "Queued" in m.content)
    # 3. Once the guild's jobs finish, it may queue again.
    engine_faults.release.set()
    await first.wait_message(has_result, 60)
    await dm.wait_message(has_result, 60)
    await (await imagine(fake, alice, prompt="three", seed=3)).wait_message(has_result, 60)
