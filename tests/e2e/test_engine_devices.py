"""Several devices: one whose engine cannot load does not stop the bot from serving on the others.

Real FluxBot against the fake Discord, real SQLite, the real tiny engine; the production start-up path
(engine/pool.py's WorkerPool). The first device's loader raises the engine's own ModelNotFoundError.
"""
from __future__ import annotations

from bot.app import build_bot
from bot.engine_state import EngineStatus
from engine.errors import ModelNotFoundError
from tests.e2e.reliability_kit import *  # noqa: F401,F403 (fixtures and helpers)
from tests.e2e.reliability_kit import has_result, imagine


async def test_a_device_that_cannot_load_leaves_the_bot_serving_on_the_other(fake_discord, start_bot, rel_config,
                                                                              rel_engine):
    fake = fake_discord
    tries: list[str] = []

    def loader(_settings, device):  # the first device has no model; the second is the shared tiny engine
        tries.append(device)
        if len(tries) == 1:
            raise ModelNotFoundError("[engine] model = /nowhere/flux.safetensors: no such file or folder")
        return rel_engine

    bot = await start_bot(await build_bot(rel_config(engine={"devices": ["cpu", "cpu"]}), engine_loader=loader,
                                  close_engines=False))
    # 1. Both devices were tried; the engine is ready on the one that loaded.
    assert await bot.engines.wait_loaded() == 1
    assert tries == ["cpu", "cpu"]
    assert bot.engines.state.status is EngineStatus.READY and bot.engines.state.devices == ("cpu#1",)
    # 2. Users see it ready there, and a job runs to its image.
    alice = fake.add_user("alice")
    ix = await fake.slash(alice, "queue")
    assert "Engine ready on cpu#1" in (await ix.wait_message(lambda m: m.ephemeral and m.embeds)).text()
    ix = await imagine(fake, alice, prompt="a lighthouse at dusk", seed=5)
    await ix.wait_message(has_result, 30)
