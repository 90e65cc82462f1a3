"""The web console inside the bot (`[web] enabled`: `embedded_console` on the bot's services, as `python -m bot run`
serves it): a request from the page takes its turn in the bot's one queue, /queue shows it as the web console's, and
nothing about it goes to Discord (the page that asked shows it)."""
from __future__ import annotations

import asyncio
import logging

import pytest

from bot.web.exposure import ServeOptions
from bot.web.standalone import embedded_console
from db import jobs as store_jobs
from tests.e2e.reliability_kit import *  # noqa: F401,F403 (fixtures and helpers)
from tests.e2e.reliability_kit import has_result, imagine
from tests.support.web_console import first_output, form

gradio_client = pytest.importorskip("gradio_client")

log = logging.getLogger(__name__)


async def test_a_web_job_shares_the_bots_queue_and_never_reaches_discord(fake_discord, start_bot, make_rel_bot,
                                                                        engine_faults, tmp_path):
    fake = fake_discord
    bot = await start_bot(await make_rel_bot())
    await bot.engines.wait_loaded()
    alice = fake.add_user("alice")
    # the console as `python -m bot run` serves it with [web] enabled: on the bot's own services
    async with embedded_console(bot.services, ServeOptions(port=0)) as console:
        client = await asyncio.to_thread(gradio_client.Client, console.url, verbose=False,
                                         download_files=str(tmp_path))
        # 1. alice's job holds the worker; a request from the page waits behind it
        engine_faults.pause_at_step = 1
        first = await imagine(fake, alice, prompt="alice's cat", seed=1)
        await asyncio.to_thread(engine_faults.paused.wait, 30)
        web = await asyncio.to_thread(client.submit, *form("a web fox", 3, size="256x256"), api_name="/generate")
        status, _, web_id, *_ = await asyncio.to_thread(first_output, web)
        web_id = int(web_id)
        assert status.startswith(f"Job #{web_id} queued: #1 in line")
        # 2. /queue shows it as the web console's, not as a Discord mention
        listing = (await (await fake.slash(alice, "queue")).wait_message(lambda m: m.ephemeral and m.embeds)).text()
        assert f"`#1` job {web_id} · web console (local)" in listing, listing
        # 3. both finish: the page shows its job; alice gets hers in Discord
        engine_faults.release.set()
        assert (await asyncio.to_thread(web.result, 120))[0].startswith(f"Job #{web_id} done")
        await first.wait_message(has_result, 60)
    # 4. nothing about the web job went to Discord; it is no delivery the bot still owes
    await asyncio.sleep(1.0)  # what a delivery would take
    assert not [m for m in fake.messages if "web fox" in m.content or f"#{web_id}" in m.content
                or any("web fox" in str(e) for e in m.embeds)]
    job = await store_jobs.get_job(bot.store, web_id)
    assert (job.source, job.user_name, job.status, job.delivered_at) == ("web", "local", "done", None)
    assert [j.id for j in await store_jobs.undelivered_jobs(bot.store)] == []
