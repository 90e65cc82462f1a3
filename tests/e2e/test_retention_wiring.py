"""The running bot prunes old PNGs by [storage] limits and never touches job records."""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import replace

from bot.app import build_bot
from bot.config import StorageSettings
from tests.e2e.reliability_kit import rel_config  # noqa: F401  (fixture)


async def test_bot_prunes_images_older_than_the_limit_at_start(fake_discord, start_bot, rel_config, tiny_engine,
                                                               tmp_path):
    config = rel_config()
    config = replace(config, storage=StorageSettings(max_image_age_days=1.0))
    images = tmp_path / "images"
    images.mkdir()
    old, fresh, foreign = images / "7.png", images / "8_1.png", images / "notes.png"
    for f in (old, fresh, foreign):
        f.write_bytes(b"png")
    ten_days_ago = time.time() - 10 * 86400
    os.utime(old, (ten_days_ago, ten_days_ago))
    os.utime(foreign, (ten_days_ago, ten_days_ago))

    bot = await start_bot(await build_bot(config, engine_loader=lambda *_: tiny_engine, close_engines=False))
    for _ in range(200):  # the first pass runs at start-up, in a thread
        if not old.exists():
            break
        await asyncio.sleep(0.02)
    assert not old.exists(), "a 10-day-old image survived max_image_age_days = 1"
    assert fresh.exists(), "a fresh image was pruned"
    assert foreign.exists(), "a file the bot did not write was pruned"
    assert bot.store is not None


async def test_no_limits_means_nothing_is_pruned(fake_discord, start_bot, rel_config, tiny_engine, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    old = images / "3.png"
    old.write_bytes(b"png")
    os.utime(old, (0, 0))
    await start_bot(await build_bot(rel_config(), engine_loader=lambda *_: tiny_engine, close_engines=False))
    await asyncio.sleep(0.3)
    assert old.exists()
