"""Failover through the bot with `[engine] backend = "ray"`: the real FluxBot against the fake Discord, SQLite, and a
local Ray instance that the bot starts itself (`[ray] address` empty, one logical GPU), whose engine actor loads the
tiny model with tests/support/engines.py's seams (the prompt "slow" takes 0.3 s a step: time to kill it mid-job).

The actor's process is killed mid-job (SIGKILL of `RayEngine.pid`, as the out-of-memory killer or a crash would end
it). What the user must see: the job's status line says it waits again, the job runs again once Ray restarted the actor
(its model reloaded) and the user gets exactly one result; the job's row ends `done` once. The same failover of the
pool alone (no bot) is in tests/engine/test_ray_pool.py. Skipped only when Ray is not installed (`pip install -e
'.[ray]'`; CI requires it).
"""
from __future__ import annotations

import os
import signal

import pytest

pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")

from bot.job_types import JobStatus  # noqa: E402
from tests.e2e.reliability_kit import *  # noqa: E402,F401,F403 (fixtures and helpers)
from tests.e2e.reliability_kit import delivered, eventually, has_result, imagine  # noqa: E402
from tests.support.ray_cluster import start_bot_on_local_ray  # noqa: E402

pytestmark = pytest.mark.slow

STEPS = 12  # 0.3 s each: the job is still running when its actor is killed, once its status shows a step
WAIT_S = 120  # the actor's restart reloads torch and the model: tens of seconds on 2 loaded cores


async def test_an_engine_actor_killed_mid_job_requeues_it_and_the_user_gets_one_result(fake_discord, start_bot,
                                                                                       rel_config, monkeypatch):
    fake = fake_discord
    bot = await start_bot_on_local_ray(start_bot, rel_config, monkeypatch)
    (worker,) = bot.engines.workers
    events = []
    bot.jobs.subscribe(events.append)
    # 1. A job runs on the actor; once its status line shows a step, the actor's process dies (its node stays).
    alice = fake.add_user("alice")
    ix = await imagine(fake, alice, prompt="slow", seed=7, steps=STEPS)
    assert (await ix.wait_response()).deferred
    await ix.wait_message(lambda m: "Generating, step" in m.content, 60)  # the user saw it run
    pid = worker.engine.pid
    os.kill(pid, signal.SIGKILL)
    # 2. The user gets the image once the restarted actor ran the job again from scratch.
    result = await ix.wait_message(has_result, WAIT_S)
    job = await eventually(lambda: delivered(bot, 1), 30, "job 1's delivery")
    assert job.status == "done" and job.result_message_id == result.id and "Seed 7" in result.text()
    assert [a.image_size for a in result.attachments] == [(256, 256)]
    # 3. Its status line said it was waiting again between the two runs, and ends done.
    status = ix.original
    lines = [s.content for s in status.history] + [status.content]
    first_run = next(i for i, line in enumerate(lines) if "Generating, step" in line)
    again = next((i for i, line in enumerate(lines) if i > first_run and "Queued" in line), None)
    assert again is not None, f"the status line never said the job waits again: {lines}"
    assert any("Generating" in line for line in lines[again:]) and "Done" in lines[-1], lines
    # 4. It went back to the queue once, started twice and was done once; one result message in all of Discord.
    mine = [e for e in events if e.job_id == 1]
    assert sum(e.requeued for e in mine) == 1
    back = next(i for i, e in enumerate(mine) if e.requeued)
    assert [e.step for e in mine[back:] if e.step] == list(range(1, STEPS + 1))  # the second run, from its first step
    assert sum(e.status is JobStatus.RUNNING and not e.step and not e.warming_up for e in mine) == 2
    assert [e.status for e in mine if e.status.finished] == [JobStatus.DONE]
    assert [m.id for m in fake.messages if has_result(m)] == [result.id]
    # 5. Ray restarted the actor on its node (a new process, the model reloaded); the bot kept its one worker.
    assert worker.engine.restarts == 1 and worker.engine.pid != pid and bot.engines.workers == [worker]
