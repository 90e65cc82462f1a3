"""End-to-end fixtures: a FakeDiscord on loopback, discord.py patched to it, bots started and stopped."""
from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest` run without `python -m` does not put the repo root on sys.path
    sys.path.insert(0, str(ROOT))

from tests.fakediscord import FakeDiscord  # noqa: E402
from tests.fakediscord import harness  # noqa: E402

log = logging.getLogger(__name__)


@pytest.fixture
async def fake_discord():
    """A started FakeDiscord with discord.py pointed at it; restored and stopped after the test."""
    fake = FakeDiscord()
    await fake.start()
    fake.patch()
    try:
        yield fake
    finally:
        await fake.stop()
        if fake.unknown_routes:
            warnings.warn(f"fakediscord: the bot called routes the fake does not serve: {fake.unknown_routes}")


@pytest.fixture
async def start_bot(fake_discord):
    """`await start_bot(bot, wait_sync=True)`: run a commands.Bot against the fake until on_ready and its
    command sync; every bot started is stopped after the test."""
    started = []

    async def _start(bot, **kwargs):
        started.append(bot)
        return await harness.start_bot(bot, fake_discord, **kwargs)

    yield _start
    for bot in started:
        await harness.stop_bot(bot)


@pytest.fixture
def stop_bot():
    """`await stop_bot(bot)`: close a bot started with start_bot and wait for it to end."""
    return harness.stop_bot
