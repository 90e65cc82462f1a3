"""The engine recipe through the bot: a finished job keeps the recipe it was made with, and /show of a job whose
file was pruned says under its status line that its pixels may differ, and why, when the engine's recipe changed
since (engine/recipe.py). (Not an ephemeral followup: after a deferred reply, Discord turns the first followup into
that reply, which the status line then overwrites.)
The same recipe regenerates silently (tests/e2e/test_bot.py checks those pixels are the same).
Runs on both `[engine] backend`s (tests/support/backends.py): with Ray, the recipe is the one the engine actor
reported when it loaded (`RayEngine.recipe_differences`), and the job made again there."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import update

from db import jobs as store_jobs
from db.models import Job
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
