"""Run the real `python -m bot run` in its own process against a FakeDiscord served by the test process.

    python tests/e2e/bot_process.py --api http://127.0.0.1:PORT/api/v10 --gateway ws://127.0.0.1:PORT/gateway \
        [--pause-file PATH [--ray]] -- --config CONFIG run

1. discord.py is pointed at the fake (the two URLs the fake's `patch()` sets in-process);
2. with `--pause-file`, the first denoising step of the first job creates that file and then blocks, so that
   the test can SIGKILL the process in the middle of a job (the seam is a forward pre-hook on the loaded DiT);
   with `--ray` (the config's `[engine] backend = "ray"`), the engine loads in an actor of the local Ray instance
   the bot starts: the actor loads it with `load_paused`, which finds the file's path in the environment the
   instance's processes inherit from this one;
3. then `bot.cli.main(argv)`: the same config loading, logging set-up (token masked) and client as a user's.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

PAUSE_FILE_ENV = "FLUXBOT_TEST_PAUSE_FILE"  # the marker's path, for an engine actor's `load_paused`
PAUSED_LOADER = "tests.e2e.bot_process:load_paused"  # "module:function", the engine actor's loader


def point_discord_at(api: str, gateway: str) -> None:
    import discord.gateway
    import discord.http
    import yarl

    discord.http.Route.BASE = api
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)


def hold_first_step(engine, marker: Path):
    """`engine`, whose DiT's first forward writes `marker` and never returns."""
    def hold(_module, _args, _kwargs):
        marker.write_text("paused in the first denoising step\n")
        while True:  # until SIGKILL
            time.sleep(1)

    engine.pipe.transformer.register_forward_pre_hook(hold, with_kwargs=True)
    return engine


def load_paused(settings, device: str):
    """An engine actor's loader (`PAUSED_LOADER`): `Engine.load`, held at its first step (the marker from the env)."""
    from engine.pipeline import Engine

    return hold_first_step(Engine.load(settings, device), Path(os.environ[PAUSE_FILE_ENV]))


def pause_first_step(marker: Path, *, in_ray_actor: bool) -> None:
    """Wrap Engine.load (local workers) or the engine actors' loader (Ray) so that the loaded DiT's first forward
    writes `marker` and never returns."""
    if in_ray_actor:
        from engine.ray_engine import RayEngine

        os.environ[PAUSE_FILE_ENV] = str(marker)  # before the bot starts Ray: its processes inherit it
        real_start = RayEngine.start.__func__

        def start(cls, settings, node_id, resources, *, name="", loader=None):
            return real_start(cls, settings, node_id, resources, name=name, loader=loader or PAUSED_LOADER)

        RayEngine.start = classmethod(start)
        return
    from engine.pipeline import Engine

    real_load = Engine.load.__func__

    def load(cls, settings, device="cpu"):
        return hold_first_step(real_load(cls, settings, device), marker)

    Engine.load = classmethod(load)


def main(argv: list[str]) -> int:
    # 1. Our own options, then the bot's command line after "--".
    p = argparse.ArgumentParser()
    p.add_argument("--api", required=True)
    p.add_argument("--gateway", required=True)
    p.add_argument("--pause-file", type=Path)
    p.add_argument("--ray", action="store_true", help="the engine loads in a Ray actor: pause it there")
    ours, bot_argv = p.parse_known_args(argv)
    if bot_argv[:1] == ["--"]:
        bot_argv = bot_argv[1:]
    # 2. The fake Discord and the pause seam.
    point_discord_at(ours.api, ours.gateway)
    if ours.pause_file is not None:
        pause_first_step(ours.pause_file, in_ray_actor=ours.ray)
    # 3. The bot, as `python -m bot ...` runs it.
    from bot.cli import main as bot_main

    return bot_main(bot_argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
