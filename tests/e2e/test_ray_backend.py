"""The bot end to end with `[engine] backend = "ray"`: the real FluxBot against the fake Discord, SQLite, and a local
Ray instance that the bot starts itself (`[ray] address` empty, one logical GPU), whose engine actor loads the tiny
model with tests/support/engines.py's seams (a "slow" prompt takes 0.3 s a step).

What only this test covers: the bot starting Ray itself and its pool starting the actor with a named loader (the
scenarios of local workers run on Ray in tests/e2e/test_bot.py and test_loras_images.py, whose bots share one actor
and one Ray instance per module: tests/support/backends.py): /imagine → status with its steps → the PNG with its
embed and buttons, with the same pixels as the local engine for the same seed. Skipped only when Ray is not installed
(`pip install -e '.[ray]'`; CI installs it).
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")

from bot.engine_state import EngineStatus  # noqa: E402
from engine.spec import JobSpec  # noqa: E402
from tests.e2e.reliability_kit import *  # noqa: E402,F401,F403 (fixtures and helpers)
from tests.e2e.reliability_kit import delivered, eventually, has_result, imagine, job_buttons  # noqa: E402
from tests.support.ray_cluster import start_bot_on_local_ray  # noqa: E402

pytestmark = pytest.mark.slow



def pixels(message) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(message.attachments[0].data)))


async def test_the_bot_on_a_local_ray_instance_serves_as_with_local_workers(fake_discord, start_bot, rel_config,
                                                                          tiny_engine, monkeypatch):
    fake = fake_discord
    bot = await start_bot_on_local_ray(start_bot, rel_config, monkeypatch)
    # 1. One worker, on the local instance's one (logical) GPU; users see the engine ready there.
    assert await bot.engines.wait_loaded() == 1
    assert bot.engines.state.status is EngineStatus.READY and bot.engines.state.devices[0].startswith("ray:")
    alice = fake.add_user("alice")
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
