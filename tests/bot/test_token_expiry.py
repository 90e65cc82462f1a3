"""bot.token_expiry: the background sweep clears interaction tokens once Discord's 15 minutes are over, keeps
fresh ones, and survives a failing pass."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from bot import token_expiry
from db import jobs as store_jobs
from db.records import NewJob
from db.session import open_store


def _job(token: str, age: timedelta) -> NewJob:
    return NewJob(user_id=1, prompt="p", seed=1, steps=2, width=256, height=256, guidance=3.5, interaction_id=9,
                  interaction_token=token, interaction_created_at=datetime.now(timezone.utc) - age)


async def test_the_sweep_clears_expired_tokens_keeps_fresh_ones_and_outlives_a_failing_pass(tmp_path, monkeypatch):
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'fluxbot.db'}")
    try:
        fresh = await store_jobs.create_job(store, _job("fresh-token-0123456789", timedelta(minutes=14)))
        # 1. The first pass fails (a busy store, say); the next one still runs.
        real, calls = store_jobs.forget_interaction_tokens, []

        async def flaky(store_, before):
            calls.append(before)
            if len(calls) == 1:
                raise RuntimeError("database is locked")
            return await real(store_, before)

        monkeypatch.setattr(store_jobs, "forget_interaction_tokens", flaky)
        sweep = asyncio.create_task(token_expiry.forget_periodically(store, interval_s=0.05))
        stale = await store_jobs.create_job(store, _job("stale-token-0123456789", timedelta(minutes=15, seconds=1)))
        for _ in range(200):
            if (await store_jobs.get_job(store, stale.id)).interaction_token is None:
                break
            await asyncio.sleep(0.02)
        sweep.cancel()
        await asyncio.gather(sweep, return_exceptions=True)
        # 2. The expired token is gone after the failed pass; the fresh one is kept.
        assert len(calls) >= 2
        assert (await store_jobs.get_job(store, stale.id)).interaction_token is None
        assert (await store_jobs.get_job(store, fresh.id)).interaction_token == "fresh-token-0123456789"
    finally:
        await store.close()
