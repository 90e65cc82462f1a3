"""The engine's state as users see it, and refusals that arrive after the slow-admission defer.

Real FluxBot against the fake Discord, real SQLite. A failing engine is the real loader given a model path that
does not exist (no mock): it raises the engine's own ModelNotFoundError, in the bot's process or, with
`[engine] backend = "ray"` (tests/support/backends.py), in the engine actor, whose error the pool reports the same way.
The engine's side runs on both backends: a load that fails, jobs waiting while the model loads, and jobs queued while
a load that then fails. Local only: what the bot refuses once the engine failed (buttons, the Edit form, /show: the
same refusal whichever backend failed) and the refusals decided at admission (the defer, the locked store).
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from bot.app import build_bot
from bot.client import FluxBot
from bot.engine_state import EngineStatus
from db import jobs as store_jobs
from tests.e2e.reliability_kit import *  # noqa: F401,F403 (fixtures and helpers)
from tests.e2e.reliability_kit import count_rows, delivered, edit_form_id, eventually, has_result, imagine
from tests.e2e.refusals import public_messages, refusal
from tests.support.backends import backend, on_both_backends  # noqa: F401 (backend: a fixture)

log = logging.getLogger(__name__)

MISSING_MODEL = "/nonexistent/models/majicflus_v134.safetensors"
TOKEN = "MTIz.secret-token-never-shown"


def everything_said(fake) -> str:
    return "\n".join(v.content for m in fake.messages for v in [*m.history, m.state]) + \
        "\n".join(m.text() for m in fake.messages)


@pytest.fixture
def broken_bot(rel_config, backend):
    """A FluxBot whose [engine] model does not exist, loaded by the real loader (`gate`: wait for it first, in the
    bot's process), on the test's backend."""
    async def _make(*, gate: threading.Event | None = None, **changes) -> FluxBot:
        from bot.config import Secret

        config = backend.configure(rel_config(engine={"model": MISSING_MODEL}, discord={"token": Secret(TOKEN)},
                                              **changes))

        def load_after_gate(settings, where):  # where: the device, or with Ray the node of the engine actor
            gate.wait(30)
            return backend.load(settings, where)
        return await build_bot(config, engine_loader=load_after_gate if gate is not None else None)  # None: Engine.load
    return _make


# --- the engine failed to start -------------------------------------------------------------------------------------

@on_both_backends
async def test_an_engine_that_cannot_load_refuses_imagine_with_its_reason_and_queue_shows_it(
        fake_discord, start_bot, broken_bot):
    fake = fake_discord
    bot = await start_bot(await broken_bot())
    assert await bot.engines.wait_loaded() == 0
    assert bot.engines.state.status is EngineStatus.FAILED
    alice = fake.add_user("alice")
    # 1. /imagine: an ephemeral refusal with the engine's own reason and what the owner can do; no job.
    ix = await imagine(fake, alice, prompt="a lighthouse", seed=3)
    said = await refusal(fake, ix)
    assert said.startswith("The image engine failed to start: [engine] model = ")
    assert "no such file or folder" in said and "python -m bot doctor" in said and "Nothing was queued" in said
    assert await count_rows(bot.store) == 0
    # 2. /queue says the same.
    ix = await fake.slash(alice, "queue")
    text = (await ix.wait_message(lambda m: m.ephemeral and m.embeds)).text()
    assert "The image engine failed to start" in text and "Nothing is waiting." in text
    assert "starts at once" not in text
    # 3. Never a trace, never the token.
    said_all = everything_said(fake)
    assert "Traceback" not in said_all and TOKEN not in said_all


async def test_buttons_the_edit_form_and_show_regenerate_are_refused_while_the_engine_failed(
        fake_discord, start_bot, stop_bot, make_rel_bot, broken_bot, rel_config, tmp_path):
    fake = fake_discord
    alice = fake.add_user("alice")
    # 1. A result made while the engine worked; an Edit form left open; the PNG pruned since.
    good = await start_bot(await make_rel_bot())
    await good.engines.wait_loaded()
    ix = await imagine(fake, alice, prompt="a red kite", seed=11)
    result = await ix.wait_message(has_result, 30)
    await eventually(lambda: delivered(good, 1))
    form = await fake.click(alice, result, "Edit")
    assert (await form.wait_response()).modal_custom_id
    await stop_bot(good)
    for png in (tmp_path / "images").glob("*.png"):
        png.unlink()
    # 2. The next start cannot load its model.
    bot = await start_bot(await broken_bot())
    assert await bot.engines.wait_loaded() == 0
    attempts = [await fake.click(alice, result, "Reroll"),
                await fake.click(alice, result, "Vary (Subtle)"),
                await fake.click(alice, result, "Edit"),
                await fake.submit_modal(alice, edit_form_id(good, 1, form.id), {"prompt": "a blue kite"}),
                await fake.slash(alice, "show", {"job": 1})]
    # 3. Each gets the same private answer (the Edit button: no form to fill in for nothing), and no job exists.
    for attempt in attempts:
        assert "The image engine failed to start" in await refusal(fake, attempt), attempt.describe()
        assert (await attempt.wait_response()).type != 9
    assert await count_rows(bot.store) == 1


# --- the model is still loading ----------------------------------------------------------------------------------------

@on_both_backends
async def test_while_the_model_loads_jobs_wait_with_an_honest_line_then_run(fake_discord, start_bot, rel_config,
                                                                         rel_engine, gate, backend):
    fake = fake_discord
    slow_load = await backend.loader(rel_engine, gate=gate)
    bot = await start_bot(await build_bot(backend.configure(rel_config()), engine_loader=slow_load,
                                          close_engines=False))
    assert bot.engines.state.status is EngineStatus.LOADING
    alice = fake.add_user("alice")
    # 1. Accepted, with "waiting for the model to load" where an ETA would be made up.
    ix1 = await imagine(fake, alice, prompt="first", seed=1)
    ix2 = await imagine(fake, alice, prompt="second", seed=2)
    line = await ix2.wait_message(lambda m: "Queued, position 2 · waiting for the model to load" in m.content)
    assert all("ready in about" not in v.content for v in [*line.history, line.state])
    ix = await fake.slash(alice, "queue")
    text = (await ix.wait_message(lambda m: m.ephemeral and m.embeds)).text()
    assert "The model is loading" in text and "2 waiting" in text and "~" not in text
    # 2. The model is there: both run and are delivered, and /queue says it is ready.
    gate.set()
    assert await bot.engines.wait_loaded() == 1
    assert bot.engines.state.status is EngineStatus.READY and backend.serves(bot)
    for ix in (ix1, ix2):
        await ix.wait_message(has_result, 30)
    (device,) = bot.engines.state.devices  # cpu#0, or the Ray slot ray:<host>/<node>#0
    assert device.startswith("cpu#0" if backend.name == "local" else "ray:"), device
    ix = await fake.slash(alice, "queue")
    assert f"Engine ready on {device}" in (await ix.wait_message(lambda m: m.ephemeral and m.embeds)).text()


@on_both_backends
async def test_jobs_queued_while_loading_are_told_when_the_load_then_fails_and_can_be_cancelled(
        fake_discord, start_bot, broken_bot, gate):
    fake = fake_discord
    bot = await start_bot(await broken_bot(gate=gate))
    alice = fake.add_user("alice")
    ix = await imagine(fake, alice, prompt="a waiting ship", seed=4)
    status = await ix.wait_message(lambda m: "waiting for the model to load" in m.content)
    # 1. The load fails: the waiting line now says so (the job stays saved for the next start).
    gate.set()
    assert await bot.engines.wait_loaded() == 0
    status = await ix.wait_message(lambda m: "The image engine failed to start" in m.content)
    assert "no such file or folder" in status.content and "runs once the bot is fixed" in status.content
    assert (await store_jobs.get_job(bot.store, 1)).status == "queued"
    # 2. Its owner can still cancel it.
    click = await fake.click(alice, status, "Cancel")
    assert "Job #1 cancelled" in (await click.wait_message(lambda m: m.ephemeral)).content
    assert (await store_jobs.get_job(bot.store, 1)).status == "cancelled"


# --- a refusal after the slow-admission defer ------------------------------------------------------------------------

def hold_write_lock(db: Path, seconds: float) -> tuple[sqlite3.Connection, threading.Timer]:
    """Another program (a backup, a `sqlite3` shell) holds SQLite's write lock for `seconds`."""
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("UPDATE jobs SET prompt = prompt")
    release = threading.Timer(seconds, other.execute, args=("COMMIT",))
    release.start()
    return other, release


async def test_a_refusal_after_the_slow_defer_is_private_and_leaves_no_public_message(
        fake_discord, start_bot, make_rel_bot, tmp_path):
    fake = fake_discord
    bot = await start_bot(await make_rel_bot(limits={"max_unfinished_per_user": 1, "cooldown_s": 0}))
    await bot.engines.wait_loaded()
    alice = fake.add_user("alice")
    # 1. The store is locked for 2.5 s: alice's first request waits to be written, her second waits behind it
    #    for the per-user check; both defer publicly after the grace (job_start.SUBMIT_GRACE_S).
    other, release = hold_write_lock(tmp_path / "fluxbot.db", 2.5)
    try:
        first = await imagine(fake, alice, prompt="one ship", seed=1)
        second = await imagine(fake, alice, prompt="two ships", seed=2)
        for ix in (first, second):
            response = await ix.wait_response(timeout=5)
            assert response.deferred and not response.ephemeral and response.latency_s < 3.0
        # 2. The lock goes: the first is queued; the second is over alice's limit of one unfinished job.
        said = await refusal(fake, second)
    finally:
        release.join()
        other.close()
    assert "unfinished job" in said
    # 3. The refusal is private, and the public "thinking…" message of the second is gone.
    assert second.original is not None and second.original.deleted
    # 4. The first runs and is delivered as usual.
    await first.wait_message(has_result, 30)
    assert await count_rows(bot.store) == 1


async def test_a_fast_refusal_is_an_ephemeral_response_without_any_defer(fake_discord, start_bot, make_rel_bot):
    fake = fake_discord
    bot = await start_bot(await make_rel_bot(limits={"max_unfinished_per_user": 1, "cooldown_s": 0},
                                       discord={"banned_words": ["kraken"]}))
    await bot.engines.wait_loaded()
    ix = await imagine(fake, fake.add_user("alice"), prompt="a KRAKEN at sea", seed=1)
    assert "kraken" in await refusal(fake, ix)
    # The shape is the point here, and it does not depend on the machine's load: the banned word is found before
    # the admission's first await, so the admission is over before the grace timer can fire.
    response = await ix.wait_response()
    assert response.type == 4 and response.ephemeral
    await asyncio.sleep(0.2)
    assert public_messages(ix) == [] and await count_rows(bot.store) == 0


async def test_a_store_locked_past_the_busy_timeout_refuses_privately_and_writes_nothing(
        fake_discord, start_bot, make_rel_bot, rel_config, tmp_path):
    fake = fake_discord
    config = rel_config()
    config = replace(config, database=replace(config.database, busy_timeout_s=2.0))
    bot = await start_bot(await make_rel_bot(config))
    await bot.engines.wait_loaded()
    # 1. Another program holds the write lock longer than the bot waits for it (2 s).
    other, release = hold_write_lock(tmp_path / "fluxbot.db", 3.0)
    try:
        ix = await imagine(fake, fake.add_user("alice"), prompt="a locked door", seed=7)
        response = await ix.wait_response(timeout=5)
        assert response.deferred and not response.ephemeral and response.latency_s < 3.0
        # 2. A private "busy, try again" instead of "Something went wrong (ref …)"; nothing public remains.
        said = await refusal(fake, ix)
    finally:
        release.join()
        other.close()
    assert said.startswith("The bot's database is busy right now") and "ref " not in said
    assert await count_rows(bot.store) == 0
