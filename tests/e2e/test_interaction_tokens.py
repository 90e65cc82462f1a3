"""Interaction tokens are secrets (for 15 minutes, anyone holding one can post as the bot in that channel): none
reaches a log line, even at DEBUG where discord.py logs every webhook URL and every gateway event, and the store
keeps one only while it can be used (until the job is delivered, or 15 minutes after the interaction).
"""
from __future__ import annotations

import asyncio
import io
import logging
from datetime import datetime, timedelta, timezone

from bot.config import LoggingSettings
from bot.logging_setup import MASK, setup_logging
from db import jobs as store_jobs
from db.records import NewJob
from db.session import open_store
from tests.e2e.reliability_kit import *  # noqa: F401,F403 (fixtures and helpers)
from tests.e2e.reliability_kit import crafted_click, delivered, eventually, has_result, imagine

log = logging.getLogger(__name__)

STALE_TOKEN = "stale-interaction-token-from-the-last-run-0123456789"


async def test_no_interaction_token_in_any_log_line_at_debug_and_none_kept_once_useless(
        fake_discord, start_bot, make_rel_bot, rel_config, engine_faults, tmp_path):
    fake = fake_discord
    config = rel_config()
    # 1. The last run left a cancelled job whose interaction is 16 minutes old, its token still stored.
    store = await open_store(config.database.url)
    stale = await store_jobs.create_job(store, NewJob(
        user_id=1, prompt="old", seed=1, steps=2, width=256, height=256, guidance=3.5, channel_id=fake.channel.id,
        interaction_id=7, interaction_token=STALE_TOKEN,
        interaction_created_at=datetime.now(timezone.utc) - timedelta(minutes=16)))
    await store_jobs.cancel_job(store, stale.id)
    await store.close()
    # 2. A session at DEBUG for fluxbot and discord.py, through the console and the log file.
    console = io.StringIO()
    log_file = tmp_path / "logs" / "fluxbot.log"
    handles = setup_logging(LoggingSettings(file=str(log_file), level="DEBUG", discord_level="DEBUG"),
                            secrets=[fake.token], stream=console)
    try:
        bot = await start_bot(await make_rel_bot(config))
        await bot.engines.wait_loaded()
        # 2a. Start-up cleared the expired token and kept the rest of the row.
        old = await store_jobs.get_job(bot.store, stale.id)
        assert old.interaction_token is None and old.interaction_id == 7
        alice = fake.add_user("alice")
        # 2b. A job held at its first step: its token is stored (a result within 15 minutes is its followup).
        engine_faults.pause_at_step = engine_faults.calls + 1
        ix = await imagine(fake, alice, prompt="a lighthouse at dusk", seed=3)
        await asyncio.to_thread(engine_faults.paused.wait, 30)
        job_id = (await store_jobs.user_history(bot.store, alice.id)).items[0].id
        assert (await store_jobs.get_job(bot.store, job_id)).interaction_token == ix.token
        engine_faults.release.set()
        result = await ix.wait_message(has_result, 30)
        # 2c. Delivered: the token is gone from the store.
        job = await eventually(lambda: delivered(bot, job_id), 10, "the delivery")
        assert job.interaction_token is None
        # 2d. More interactions that go through callbacks and webhooks: a modal, a cancel, a refusal, a bad button.
        await (await fake.click(alice, result, "Edit")).wait_response()
        await (await crafted_click(fake, alice, "fluxbot:cancel:%d" % job_id)).wait_response()
        await (await fake.slash(alice, "imagine", {"prompt": "", "size": "256x256"}, validate=False)).wait_response()
        await (await crafted_click(fake, alice, "fluxbot:nuke:1")).wait_response()
        await asyncio.sleep(0.3)
    finally:
        for h in (handles.console, handles.file):
            h.flush()
        handles.close()
    # 3. Every interaction token went over the wire, and none reached the log file or the console.
    tokens = [i.token for i in fake.interactions.values()] + [STALE_TOKEN]
    assert len(tokens) >= 6
    for where, text in {"log file": log_file.read_text(), "console": console.getvalue()}.items():
        assert "WebSocket Event" in text and "/webhooks/" in text, where  # discord.py's DEBUG lines are there
        assert f"/webhooks/{fake.application_id}/{MASK}" in text, where
        assert "hidden] hidden]" not in text, where  # the two handlers' masks do not stack
        leaked = [t for t in tokens if t in text]
        assert leaked == [], f"interaction token(s) in the {where}: {leaked}"
