"""An image attachment's stored input follows its jobs' PNGs through the running bot (fake Discord, real SQLite,
files on disk): it stays while the img2img job or its 🎲 Reroll still has an image, goes with the last of them, and
/show then says the input is gone instead of making another image."""
from __future__ import annotations

import asyncio
import io
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from bot.app import build_bot
from bot.config import StorageSettings
from db import jobs as store_jobs
from engine.retention import prune_images
from tests.e2e.refusals import refusal
from tests.e2e.reliability_kit import count_rows, has_result, rel_config  # noqa: F401  (fixture)
from tests.fakediscord import Upload


def _png(width=300, height=200) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG")
    return out.getvalue()


def _age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


async def test_an_uploaded_input_is_pruned_with_the_last_png_of_its_jobs(fake_discord, start_bot, rel_config,
                                                                         tiny_engine, tmp_path):
    config = replace(rel_config(), storage=StorageSettings(max_image_age_days=1.0))
    bot = await start_bot(await build_bot(config, engine_loader=lambda *_: tiny_engine, close_engines=False))
    assert await bot.engines.wait_loaded() == 1
    images, fake = Path(config.engine.images_dir), fake_discord
    alice = fake.add_user("alice")

    async def retention_pass():          # what the bot runs every [storage] prune_interval_min
        await asyncio.to_thread(prune_images, images, 1.0, 0)
        await bot.services.housekeeping.prune_inputs()

    # 1. An img2img job and its Reroll: one stored input, named by both.
    ix = await fake.slash(alice, "imagine", {"prompt": "an oil painting", "image": Upload("me.png", _png(),
                                                                                          "image/png"),
                                             "strength": 0.5, "steps": 2, "seed": 4})
    first = await ix.wait_message(has_result, 60)
    await (await fake.click(alice, first, "Reroll")).wait_message(has_result, 60)
    job1, job2 = [await store_jobs.get_job(bot.store, i) for i in (1, 2)]
    stored = Path(job1.input_image)
    assert job2.input_image == job1.input_image and stored.is_file()
    _age(stored, 3600)                                   # uploaded an hour ago
    # 2. Job 1's PNG is pruned: the Reroll still has its image, so the input stays.
    _age(job1.images[0].path, 10 * 86400)
    await retention_pass()
    assert not Path(job1.images[0].path).exists() and stored.is_file()
    # 3. The Reroll's PNG is pruned too: the input goes with it.
    _age(job2.images[0].path, 10 * 86400)
    await retention_pass()
    assert not Path(job2.images[0].path).exists() and not stored.exists()
    # 4. /show of the job says its input is gone (no other image is made), and the records are kept.
    ix = await fake.slash(alice, "show", {"job": 2})
    text = await refusal(fake, ix)
    assert text.startswith("The input image of this job") and "is gone" in text
    assert await count_rows(bot.store) == 2
    assert (await store_jobs.get_job(bot.store, 2)).input_sha256 == job1.input_sha256
