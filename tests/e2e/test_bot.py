"""The real FluxBot (discord.py client, tiny-random engine, SQLite) against the fake Discord on loopback."""
from __future__ import annotations

import asyncio

import pytest

from bot.client import FluxBot
from bot.config import Config, DatabaseSettings, DiscordSettings, LimitsSettings, LoggingSettings, Secret
from db import jobs as store_jobs
from engine.settings import TINY, EngineSettings

SIZES = ["1:1 256x256", "2:1 512x256"]


@pytest.fixture
def make_config(tmp_path, tiny_model_dir):
    """A Config for tests: tiny model on the CPU, 64² sizes, SQLite and images under tmp_path."""
    def _make(**discord_overrides) -> Config:
        discord_settings = dict(token=Secret("unused-in-tests"), sizes=SIZES, status_edit_interval_s=0.5)
        discord_settings.update(discord_overrides)
        return Config(
            discord=DiscordSettings(**discord_settings),
            engine=EngineSettings(model=TINY, models_dir=str(tiny_model_dir.parent), profile="resident",
                                  devices=["cpu"], images_dir=str(tmp_path / "images"), default_steps=2,
                                  max_sequence_length=64),
            limits=LimitsSettings(max_unfinished_per_user=5),
            database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'fluxbot.db'}"),
            logging=LoggingSettings(file=""),
        )
    return _make


@pytest.fixture
def make_bot(make_config, tiny_engine):
    """FluxBot over the shared tiny engine (not closed with the bot)."""
    def _make(config: Config | None = None, **discord_overrides) -> FluxBot:
        return FluxBot(config or make_config(**discord_overrides), engine_loader=lambda _s, _d: tiny_engine,
                       close_engines=False)
    return _make


@pytest.fixture
async def running(fake_discord, start_bot, make_bot):
    """A started bot with its engine loaded, the fake, and a user alice."""
    bot = await start_bot(make_bot())
    assert await bot.wait_until_engines_loaded() == 1
    return bot


def has_result(m) -> bool:
    return bool(m.attachments) and bool(m.embeds)


async def imagine(fake, user, **options):
    options.setdefault("steps", 2)
    options.setdefault("size", "256x256")
    return await fake.slash(user, "imagine", options)


async def result_of(ix, timeout: float = 30.0):
    return await ix.wait_message(has_result, timeout)



async def count_jobs(bot) -> int:
    from sqlalchemy import func, select
    from db.models import Job
    async with bot.store.session() as s:
        return int(await s.scalar(select(func.count()).select_from(Job)))


# --- /imagine ---------------------------------------------------------------------------------------------------

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
    assert result.custom_ids == ["fluxbot:reroll:1", "fluxbot:vary:1", "fluxbot:edit:1", "fluxbot:delete:1"]
    assert f"<@{alice.id}>" in result.content
    # 3. The record knows where the result went.
    job = await store_jobs.get_job(bot.store, 1)
    assert job.status == "done" and job.result_message_id == result.id and job.delivered_at is not None
