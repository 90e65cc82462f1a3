"""The engine recipe through the bot: a finished job keeps the recipe it was made with, and /show of a job whose
file was pruned says under its status line that its pixels may differ, and why, when the engine's recipe changed
since (engine/recipe.py). (Not an ephemeral followup: after a deferred reply, Discord turns the first followup into
that reply, which the status line then overwrites.)
The same recipe regenerates silently (tests/e2e/test_bot.py checks those pixels are the same).
Runs on both `[engine] backend`s (tests/support/backends.py): with Ray, the recipe is the one the engine actor
reported when it loaded (`RayEngine.recipe_differences`), and the job made again there."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import update

from bot.app import build_bot

from db import jobs as store_jobs
from db.models import Job
from engine.pipeline import Engine
from engine.recipe import EngineRecipe
from tests.e2e.reliability_kit import *  # noqa: F401,F403 (fixtures)
from tests.e2e.reliability_kit import eventually, has_result, imagine
from tests.support.backends import backend, backend_bot, on_both_backends  # noqa: F401 (fixtures)


async def _started(start_bot, bot):
    bot = await start_bot(bot)
    assert await bot.engines.wait_loaded() == 1
    return bot


def _status(ix) -> str:
    """The /show's status message (the interaction's reply; the result is a followup)."""
    return ix.messages[0].text()


def _says(ix, words: str):
    async def check():
        text = _status(ix)
        return text if words in text else None
    return check


@on_both_backends
async def test_show_of_a_pruned_job_says_why_its_pixels_may_differ(fake_discord, start_bot, backend, backend_bot,
                                                                  rel_engine):
    fake = fake_discord
    bot = await _started(start_bot, await backend_bot())
    assert backend.serves(bot)
    alice = fake.add_user("alice")
    await (await imagine(fake, alice, prompt="a lighthouse", seed=5)).wait_message(has_result, 60)
    job = await store_jobs.get_job(bot.store, 1)
    assert EngineRecipe.from_dict(job.recipe) == rel_engine.recipe             # recorded when it finished
    for image in job.images:
        Path(image.path).unlink()
    # 1. The same recipe: regenerated, nothing to say.
    ix = await fake.slash(alice, "show", {"job": 1})
    await ix.wait_message(has_result, 60)
    assert "may differ" not in _status(ix)
    # 2. Made with a compiled fp8 engine (another machine, say; its fp8 kernel named): regenerated, and the user is
    #    told why it may differ.
    other = EngineRecipe(**{**rel_engine.recipe.to_dict(), "compute": "fp8.row-fast", "compile": True})
    async with bot.store.session() as session:
        await session.execute(update(Job).where(Job.id == 1).values(recipe=other.to_dict()))
        await session.commit()
    ix = await fake.slash(alice, "show", {"job": 1})
    await ix.wait_message(has_result, 60)
    note = await eventually(_says(ix, "may differ"), what="the remark under the status")
    assert "Made again from job #1's record" in note
    assert "matmul compute: bf16 now, fp8 (row-fast) then" in note and "torch.compile: off now, on then" in note
    # 3. Made before recipes were recorded.
    async with bot.store.session() as session:
        await session.execute(update(Job).where(Job.id == 1).values(recipe=None))
        await session.commit()
    ix = await fake.slash(alice, "show", {"job": 1})
    await ix.wait_message(has_result, 60)
    await eventually(_says(ix, "no engine recipe was recorded"), what="the remark about the missing recipe")


async def test_show_remakes_a_pruned_job_with_the_recipe_it_was_made_with(fake_discord, start_bot, stop_bot,
                                                                          rel_config, rel_engine):
    """The engine switches what it can for the job (engine/recipe_switch.py): a job made with bf16 compute, shown
    after the owner set `compute = "fp8"`, comes out with its original pixels and nothing to remark; only what the
    engine cannot match (here another torch) is said."""
    fake = fake_discord
    alice = fake.add_user("alice")
    # 1. Made with bf16 compute (the CPU's default), and pruned.
    bot = await _started(start_bot, await build_bot(rel_config(), engine_loader=lambda _s, _d: rel_engine,
                                                    close_engines=False))
    made = await (await imagine(fake, alice, prompt="a lighthouse", seed=5)).wait_message(has_result, 60)
    original = _png_pixels(made)
    job = await store_jobs.get_job(bot.store, 1)
    assert job.recipe["compute"] == "bf16"
    await stop_bot(bot)
    for image in job.images:
        Path(image.path).unlink()
    # 2. The same bot, now with fp8 compute: /show makes it again with bf16 compute, the same pixels, no remark.
    bot = await _started(start_bot, await build_bot(rel_config(engine={"compute": "fp8"}), engine_loader=Engine.load))
    assert bot.engines.workers[0].engine.recipe.compute == "fp8.row-fast"
    ix = await fake.slash(alice, "show", {"job": 1})
    again = await ix.wait_message(has_result, 60)
    assert np.array_equal(_png_pixels(again), original)
    assert (await store_jobs.get_job(bot.store, 2)).recipe == job.recipe      # its own record says what ran
    assert "may differ" not in _status(ix)
    # 3. What it cannot match (another torch) is said, and only that.
    stored = {**job.recipe, "torch": "2.0.0"}
    async with bot.store.session() as session:
        await session.execute(update(Job).where(Job.id == 1).values(recipe=stored))
        await session.commit()
    ix = await fake.slash(alice, "show", {"job": 1})
    again = await ix.wait_message(has_result, 60)
    note = await eventually(_says(ix, "may differ"), what="the remark under the status")
    assert f"because the engine changed since: torch version: {job.recipe['torch']} now, 2.0.0 then." in note
    assert "matmul compute" not in note
    assert np.array_equal(_png_pixels(again), original)


def _png_pixels(message) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(message.attachments[0].data)))
