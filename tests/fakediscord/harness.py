"""Start and stop a real discord.py client against a FakeDiscord."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import FakeDiscord

log = logging.getLogger(__name__)

TASK_ATTR = "_fakediscord_task"


async def start_bot(bot: Any, fake: "FakeDiscord", *, wait_sync: bool = True, timeout: float = 15.0,
                    guild_ready_timeout: float = 0.05) -> Any:
    """Run `bot.start(fake.token)` in a task; return once on_ready fired and (wait_sync) a command sync
    reached the fake. A bot that crashes while starting raises here with its own exception.

    `guild_ready_timeout`: discord.py waits this long after the last GUILD_CREATE before on_ready
    (2 s by default); the fake sends its one guild at once, so tests shorten it.
    """
    # 1. point discord.py at the fake
    fake.patch()
    bot._connection.guild_ready_timeout = min(bot._connection.guild_ready_timeout, guild_ready_timeout)
    syncs_before = fake.command_syncs
    # 2. start
    task = asyncio.create_task(bot.start(fake.token), name=f"fakediscord:{type(bot).__name__}")
    setattr(bot, TASK_ATTR, task)
    # 3. wait for ready (+ sync), surfacing a crash of the bot
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (bot.is_ready() and (not wait_sync or fake.command_syncs > syncs_before)):
        if task.done():
            exc = task.exception()
            raise RuntimeError(f"the bot stopped while starting: {exc!r}") from exc
        if loop.time() > deadline:
            await stop_bot(bot)
            raise AssertionError(f"bot not ready after {timeout}s (ready={bot.is_ready()}, command syncs="
                                 f"{fake.command_syncs - syncs_before}, unknown routes={fake.unknown_routes}); "
                                 "pass wait_sync=False if it does not sync commands")
        await asyncio.sleep(0.01)
    log.info("fakediscord: %s ready", type(bot).__name__)
    return bot


async def stop_bot(bot: Any, timeout: float = 10.0) -> None:
    """Close the bot and wait for its start() task to end; its exception (other than a cancel) is raised."""
    task: asyncio.Task | None = getattr(bot, TASK_ATTR, None)
    if not bot.is_closed():
        await bot.close()
    if task is None:
        return
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout)
