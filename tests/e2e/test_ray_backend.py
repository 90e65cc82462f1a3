"""The bot end to end with `[engine] backend = "ray"`: the real FluxBot against the fake Discord, SQLite, and a local
Ray instance that the bot starts itself (`[ray] address` empty, one logical GPU), whose engine actor loads the tiny
model with tests/support/engines.py's seams (a "slow" prompt takes 0.3 s a step).

The scenarios of local workers (tests/e2e/test_bot.py), in one bot's life (starting Ray and loading an actor take
tens of seconds on 2 cores): /imagine → status with its steps → the PNG with its embed and buttons; the same pixels
as the local engine for the same seed; 🎲 Reroll; Cancel of a running job; two users' jobs in fair order; /show
regenerating a pruned image. Skipped only when Ray is not installed (`pip install -e '.[ray]'`; CI installs it).
"""
from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")

from bot.app import build_bot  # noqa: E402
from bot.engine_state import EngineStatus  # noqa: E402
from db import jobs as store_jobs  # noqa: E402
from engine.ray_settings import RaySettings  # noqa: E402
from engine.spec import JobSpec  # noqa: E402
from tests.e2e.reliability_kit import *  # noqa: E402,F401,F403 (fixtures and helpers)
from tests.e2e.reliability_kit import delivered, eventually, has_result, imagine, job_buttons  # noqa: E402
from tests.support.engines import SEAM_LOADER  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def pixels(message) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(message.attachments[0].data)))


async def test_the_bot_on_a_local_ray_instance_serves_as_with_local_workers(fake_discord, start_bot, rel_config,
                                                                          tiny_engine, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the actor imports the seam loader from tests/
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    fake = fake_discord
    config = replace(rel_config(engine={"backend": "ray"}), ray=RaySettings(local_gpus=1, poll_s=0.5))
    bot = await start_bot(await build_bot(config, engine_loader=SEAM_LOADER))
    # 1. One worker, on the local instance's one (logical) GPU; users see the engine ready there.
    assert await bot.engines.wait_loaded() == 1
    assert bot.engines.state.status is EngineStatus.READY and bot.engines.state.devices[0].startswith("ray:")
    alice, bob = fake.add_user("alice"), fake.add_user("bob")
    # 2. /imagine: deferred, a status line with its steps, then the PNG with its recipe and four buttons; the pixels
    #    are the local engine's for the same seed.
    ix = await imagine(fake, alice, prompt="a red fox in snow", seed=42)
    assert (await ix.wait_response()).deferred
    result = await ix.wait_message(has_result, 60)
    status = await ix.wait_message(lambda m: m.kind == "response" and "Done" in m.content)
    assert any("Generating" in h.content for h in status.history) or "Done" in status.content
    assert [a.image_size for a in result.attachments] == [(256, 256)] and "Seed 42" in result.text()
    assert result.custom_ids == job_buttons(bot, 1)
    local = tiny_engine.generate(JobSpec("a red fox in snow", seed=42, steps=2, width=256, height=256))
    assert np.array_equal(pixels(result), np.asarray(local.images[0]))
    assert (await eventually(lambda: delivered(bot, 1))).status == "done"
    # 3. 🎲 Reroll by bob: a new job of his, same recipe, new seed.
    rerolled = await (await fake.click(bob, result, "Reroll")).wait_message(has_result, 60)
    job2 = await store_jobs.get_job(bot.store, 2)
    assert (job2.kind, job2.parent_id, job2.user_id) == ("reroll", 1, bob.id) and f"Seed {job2.seed}" in rerolled.text()
    # 4. Cancel of a running job (20 slow steps): it stops at its next step, no image.
    ix = await imagine(fake, alice, prompt="slow", seed=1, steps=20)
    running = await ix.wait_message(lambda m: "Generating, step" in m.content, 60)
    click = await fake.click(alice, running, "Cancel")
    assert "stops at its next step" in (await click.wait_message(lambda m: m.ephemeral)).content
    await ix.wait_message(lambda m: m.kind == "response" and "Cancelled" in m.content, 30)
    assert (await store_jobs.get_job(bot.store, 3)).status == "cancelled"
    assert not any(has_result(m) for m in ix.messages)
    # 5. Fair order through the one worker: alice's second job waits behind bob's first.
    slow = await imagine(fake, alice, prompt="slow", seed=2, steps=4)  # job 4 runs
    await slow.wait_message(lambda m: "Generating" in m.content, 60)
    a2 = await imagine(fake, alice, prompt="alice again", seed=3)       # job 5
    b1 = await imagine(fake, bob, prompt="bob's first", seed=4)         # job 6: ahead of job 5
    for ix in (slow, a2, b1):
        await ix.wait_message(has_result, 60)
    started = {j: (await store_jobs.get_job(bot.store, j)).started_at for j in (5, 6)}
    assert started[6] < started[5], started
    # 6. /show of a pruned image regenerates it on the actor: the same pixels.
    for image in (await store_jobs.get_job(bot.store, 1)).images:
        Path(image.path).unlink()
    again = await (await fake.slash(alice, "show", {"job": 1})).wait_message(has_result, 60)
    assert np.array_equal(pixels(again), pixels(result))
