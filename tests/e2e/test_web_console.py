"""The web console inside the bot (`[web] enabled`): a web job takes its turn in the bot's one queue, /queue shows it as
the web console's, and nothing about it goes to Discord (the page that asked shows it)."""
from __future__ import annotations

import asyncio
import logging

from bot.web.jobs import WebJobs, WebUser
from db import jobs as store_jobs
from engine.spec import JobSpec
from tests.e2e.reliability_kit import *  # noqa: F401,F403 (fixtures and helpers)
from tests.e2e.reliability_kit import has_result, imagine

log = logging.getLogger(__name__)


async def test_a_web_job_shares_the_bots_queue_and_never_reaches_discord(fake_discord, start_bot, make_rel_bot,
                                                                        engine_faults):
    fake = fake_discord
    bot = await start_bot(await make_rel_bot())
    await bot.engines.wait_loaded()
    alice = fake.add_user("alice")
    # 1. alice's job holds the worker; a web request (what the console sends, on the bot's own services) waits
    engine_faults.pause_at_step = 1
    first = await imagine(fake, alice, prompt="alice's cat", seed=1)
    await asyncio.to_thread(engine_faults.paused.wait, 30)
    updates = WebJobs(bot.services.jobs).run(WebUser.of(None), JobSpec("a web fox", seed=3, steps=2, width=256,
                                                                       height=256))
    queued = await anext(updates)
    assert (queued.state, queued.position) == ("queued", 1)
    # 2. /queue shows it as the web console's, not as a Discord mention
    listing = (await (await fake.slash(alice, "queue")).wait_message(lambda m: m.ephemeral and m.embeds)).text()
    assert f"`#1` job {queued.job_id} · web console (local)" in listing, listing
    # 3. both finish; the web job's result is in the store and nowhere in Discord
    engine_faults.release.set()
    last = [update async for update in updates][-1]
    assert last.state == "done" and last.record.images
    await first.wait_message(has_result, 60)
    await asyncio.sleep(1.0)  # what a delivery would take
    assert not [m for m in fake.messages if "web fox" in m.content or f"#{queued.job_id}" in m.content
                or any("web fox" in str(e) for e in m.embeds)]
    job = await store_jobs.get_job(bot.store, queued.job_id)
    assert (job.source, job.user_name, job.status, job.delivered_at) == ("web", "local", "done", None)
    assert [j.id for j in await store_jobs.undelivered_jobs(bot.store)] == []
