"""Several devices: one whose engine cannot load does not stop the bot from serving on the others.

Real FluxBot against the fake Discord, real SQLite, the real tiny engine; the production start-up path
(engine/pool.py's WorkerPool). The first device's loader raises the engine's own ModelNotFoundError.
On `[engine] backend = "ray"` too (tests/support/backends.py): the local instance's one logical GPU holds two slots
(`[ray] resources = {GPU = 0.5}`), the first slot's load fails, the second gets the module's engine actor
(engine/ray_pool.py's RayWorkerPool, its failed slot kept apart).
"""
from __future__ import annotations

from dataclasses import replace

from bot.app import build_bot
from bot.engine_state import EngineStatus
from engine.errors import ModelNotFoundError
from tests.e2e.reliability_kit import *  # noqa: F401,F403 (fixtures and helpers)
from tests.e2e.reliability_kit import has_result, imagine
from tests.support.backends import backend, on_both_backends  # noqa: F401 (backend: a fixture)


@on_both_backends
async def test_a_device_that_cannot_load_leaves_the_bot_serving_on_the_other(fake_discord, start_bot, rel_config,
                                                                              rel_engine, backend):
    fake = fake_discord
    tries: list[str] = []
    shared = await backend.loader(rel_engine)

    def loader(settings, where):  # the first device (slot) has no model; the second is the shared tiny engine
        tries.append(where)
        if len(tries) == 1:
            raise ModelNotFoundError("[engine] model = /nowhere/flux.safetensors: no such file or folder")
        return shared(settings, where)

    config = backend.configure(rel_config(engine={"devices": ["cpu", "cpu"]}))
    if backend.name == "ray":  # two slots on the local instance's one logical GPU
        config = replace(config, ray=replace(config.ray, resources={"GPU": 0.5}))
    bot = await start_bot(await build_bot(config, engine_loader=loader, close_engines=False))
    # 1. Both devices (with Ray: both slots of the node) were tried; the engine is ready on the one that loaded.
    assert await bot.engines.wait_loaded() == 1
    assert tries == (["cpu", "cpu"] if backend.name == "local" else [tries[0]] * 2), tries  # Ray: the one node, twice
    (device,) = bot.engines.state.devices  # cpu#1, or the Ray slot ray:<host>/<node>#1
    assert device.startswith("cpu#1" if backend.name == "local" else "ray:") and device.endswith("#1"), device
    assert bot.engines.state.status is EngineStatus.READY and backend.serves(bot)
    # 2. Users see it ready there, and a job runs to its image.
    alice = fake.add_user("alice")
    ix = await fake.slash(alice, "queue")
    assert f"Engine ready on {device}" in (await ix.wait_message(lambda m: m.ephemeral and m.embeds)).text()
    ix = await imagine(fake, alice, prompt="a lighthouse at dusk", seed=5)
    await ix.wait_message(has_result, 30)
