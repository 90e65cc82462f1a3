"""Shared pieces of the reliability tests (faults, bad input, security, kill/restart).

- `rel_engine`: a tiny-random Engine of these tests' own (session scope), so that fault hooks and profile
  changes never touch the `tiny_engine` other tests share.
- `EngineFaults`: a seam inside that real engine. A forward pre-hook on the DiT raises (a RuntimeError, or
  torch's own `OutOfMemoryError` exactly as CUDA raises it) or pauses at a chosen denoising step, so the
  engine's own error conversion, the worker's OOM retry and the bot's messages all run for real.
- `make_rel_bot`: a FluxBot over that engine, with the fake Discord, SQLite and images under tmp_path (built by
  `bot.app.build_bot`, as `python -m bot run` builds it).
- `gate`: a threading.Event a test sets to let a gated engine loader finish (jobs stay queued until then).
- `job_rows` / `count_rows`: the whole `jobs` table as plain tuples, to prove that a refusal changed nothing.
- `crafted_click`: a click on a button with any custom_id (on a message made to hold it, or a stale one).

Import the fixtures into a test module with `from tests.e2e.reliability_kit import *  # noqa` (pytest finds
fixtures through the module's namespace).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import threading
from dataclasses import dataclass, field

import pytest

from bot.app import build_bot
from bot.client import FluxBot
from bot.config import Config
from db import jobs as store_jobs
from tests.support.configs import SIZES, bot_config

log = logging.getLogger(__name__)

COMPONENT = 3  # interaction type of a button click

__all__ = ["rel_engine", "rel_config", "make_rel_bot", "gate", "EngineFaults", "engine_faults", "job_rows",
           "count_rows", "crafted_click", "has_result", "imagine", "eventually", "delivered", "SIZES", "job_buttons",
           "edit_form_id"]


# --- the engine and its fault seam -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def rel_engine(tiny_model_dir):
    """A tiny-random Engine owned by the reliability tests (its profile may change; hooks come and go)."""
    from tests.support.engines import loaded_tiny_engine  # torch: only when a test needs the engine

    with loaded_tiny_engine(tiny_model_dir.parent) as engine:
        yield engine


@dataclass
class EngineFaults:
    """What the DiT does on its next forward calls. One forward call = one denoising step of one batch.

    - `fail_at_step`: the forward of that step (1-based, counted over the whole test) raises `error`;
    - `oom_times`: the next N forwards raise `torch.OutOfMemoryError` (what CUDA raises when it runs out);
    - `pause_at_step`: that forward blocks until `release` is set (`paused` is set while it waits).
    """
    fail_at_step: int | None = None
    error: BaseException | None = None
    oom_times: int = 0
    pause_at_step: int | None = None
    calls: int = 0
    ooms_raised: int = 0
    paused: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def before_forward(self, _module, _args, _kwargs):  # engine thread
        import torch

        self.calls += 1
        if self.oom_times > 0:
            self.oom_times -= 1
            self.ooms_raised += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                         "capacity of 6.00 GiB of which 112.00 MiB is free.")
        if self.fail_at_step is not None and self.calls == self.fail_at_step:
            raise self.error or RuntimeError("injected engine fault")
        if self.pause_at_step is not None and self.calls == self.pause_at_step:
            self.paused.set()
            self.release.wait(60)
        return None


@pytest.fixture
def engine_faults(rel_engine):
    """An EngineFaults installed on `rel_engine`'s DiT for one test; removed (and the profile put back) after."""
    faults = EngineFaults()
    handle = rel_engine.pipe.transformer.register_forward_pre_hook(faults.before_forward, with_kwargs=True)
    try:
        yield faults
    finally:
        faults.release.set()
        handle.remove()
        if rel_engine.profile != "resident":
            rel_engine.set_profile("resident")


# --- the bot ------------------------------------------------------------------------------------------------------

@pytest.fixture
def rel_config(tmp_path, tiny_model_dir):
    """`rel_config(discord={...}, limits={...}, engine={...}, logging_={...}, db_url=...)`: a test Config (tiny model
    on the CPU, 256² sizes, SQLite and images under tmp_path) with some fields changed (tests/support/configs.py)."""
    return functools.partial(bot_config, tmp_path, tiny_model_dir.parent)


@pytest.fixture
def make_rel_bot(rel_config, rel_engine):
    """`await make_rel_bot(config=None, **rel_config kwargs)`: a FluxBot over `rel_engine` (left open on close)."""
    async def _make(config: Config | None = None, **changes) -> FluxBot:
        return await build_bot(config or rel_config(**changes), engine_loader=lambda _s, _d: rel_engine,
                               close_engines=False)
    return _make


@pytest.fixture
def gate():
    """Set it to let a gated bot's engine finish loading (until then jobs wait in the queue)."""
    event = threading.Event()
    yield event
    event.set()


# --- driving and observing ------------------------------------------------------------------------------------------

def job_buttons(bot, job_id: int, actions=("reroll", "vary", "varystrong", "upscale", "edit", "delete")) -> list[str]:
    """The custom_ids of a job's buttons as `bot` posts them (with its database's identity: bot.views)."""
    from bot.views import JobRef, job_custom_id

    return [job_custom_id(a, JobRef(job_id, bot.identity)) for a in actions]


def edit_form_id(bot, job_id: int, opener_id: int | str = "") -> str:
    """The custom_id of the Edit form `bot` opens for `job_id` from the interaction `opener_id`."""
    from bot.views import JobRef, job_custom_id

    return job_custom_id("editmodal", JobRef(job_id, bot.identity), opener_id)


def has_result(m) -> bool:
    return bool(m.attachments) and bool(m.embeds)


async def imagine(fake, user, **options):
    options.setdefault("steps", 2)
    options.setdefault("size", "256x256")
    return await fake.slash(user, "imagine", options)


async def eventually(check, timeout: float = 10.0, what: str = "the bot"):
    """Poll an async check until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := await check()):
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return value


async def delivered(bot, job_id: int):
    job = await store_jobs.get_job(bot.store, job_id)
    return job if job is not None and job.delivered_at is not None else None


async def job_rows(store) -> list[tuple]:
    """Every row of the jobs table, every column, in id order: compare two snapshots to see any change."""
    from sqlalchemy import select

    from db.models import Job

    columns = list(Job.__table__.columns)
    async with store.session() as s:
        rows = (await s.execute(select(*columns).order_by(Job.id))).all()
    return [tuple(r) for r in rows]


async def count_rows(store) -> int:
    return len(await job_rows(store))


async def crafted_click(fake, user, custom_id: str, *, message=None, channel=None):
    """A click on a button carrying `custom_id`. Discord only delivers clicks on components a message really
    has, so with `message=None` a bot message holding just that button is made first (as a message left by an
    older version of the bot, or by a database restored from an older backup, would be). With `message`, the
    click comes from that message as the user's client still shows it (it may have been deleted meanwhile)."""
    from tests.fakediscord.records import MessageState

    if message is None:
        ch = channel or fake.channel
        button = {"type": 2, "style": 2, "label": "Button", "custom_id": custom_id}
        message = fake.create_message(ch.id, "channel", MessageState(content="an old message",
                                                                     components=[{"type": 1, "components": [button]}],
                                                                     at=fake.clock()))
    ch = fake.channels[message.channel_id]
    return await fake._interact(user, COMPONENT, {"custom_id": custom_id, "component_type": 2}, ch, source=message)
