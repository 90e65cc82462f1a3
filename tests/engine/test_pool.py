"""The worker pool with the real tiny engine on the CPU: several devices on one queue, a device that cannot
load does not stop the others, and the owner is told after each device which run and which failed and why."""
from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from engine.errors import ModelNotFoundError
from engine.pipeline import Engine
from engine.pool import PoolState, WorkerPool
from engine.queue import JobQueue
from engine.settings import EngineSettings
from engine.spec import JobSpec
from tests.support.hooks import Recorder

SIZE = 256  # the engine's smallest size


@pytest.fixture(scope="module")
def settings(tiny_model_dir) -> EngineSettings:
    return EngineSettings(model="tiny-random", models_dir=str(tiny_model_dir.parent), profile="resident",
                          max_sequence_length=64, engine_process="never")


@pytest.fixture(scope="module")
def engine(settings) -> Engine:
    return Engine.load(settings, "cpu")


def spec(prompt: str, seed: int) -> JobSpec:
    return JobSpec(prompt, seed=seed, steps=1, width=SIZE, height=SIZE)


async def test_two_cpu_workers_share_the_queue_and_run_every_job_once(engine, settings):
    hooks, queue = Recorder(), JobQueue()
    loaded = []

    def loader(s, device):  # the first worker reuses the module's engine, the second loads its own
        e = engine if not loaded else Engine.load(s, device)
        loaded.append(e)
        return e

    pool = WorkerPool(replace(settings, devices=["cpu", "cpu"]), queue, hooks, loader=loader)
    state = await pool.start()
    assert state.names == ("cpu#0", "cpu#1") and state.failed == () and loaded[0] is not loaded[1]
    hooks.expect = 16
    for jid in range(16):
        queue.submit(jid, spec(f"job {jid}", jid))
    await asyncio.wait_for(hooks.done.wait(), 120)
    await pool.workers[0].stop(close_engine=False)
    await pool.workers[1].stop()
    finished = [e[1] for e in hooks.outcomes()]
    assert sorted(finished) == list(range(16)) and len(set(finished)) == 16
    assert all(w.jobs_done > 0 for w in pool.workers), [w.jobs_done for w in pool.workers]
    started = sorted(e[1] for e in hooks.log if e[0] == "started")
    assert started == list(range(16))  # each job started exactly once


async def test_a_device_that_cannot_load_is_reported_and_the_others_still_serve(engine, settings):
    hooks, queue = Recorder(), JobQueue()
    tries: list[str] = []

    def loader(s, device):  # three devices: the first has no model, the second works, the third crashes
        tries.append(device)
        if len(tries) == 1:
            raise ModelNotFoundError("[engine] model = /nowhere/flux.safetensors: no such file or folder")
        if len(tries) == 3:
            raise RuntimeError("CUDA error: device-side assert")
        return engine

    seen: list[PoolState] = []
    pool = WorkerPool(settings, queue, hooks, loader=loader, devices=["cpu", "cpu", "cpu"], on_change=seen.append)
    queue.submit(1, spec("queued before any engine loaded", 1))
    state = await pool.start()
    # 1. Every device was tried; the one that loaded runs, the two others are named with their errors.
    assert tries == ["cpu", "cpu", "cpu"] and state.done and state.names == ("cpu#1",)
    assert [(f.worker_name, str(f.error)) for f in state.failed] == [
        ("cpu#0", "[engine] model = /nowhere/flux.safetensors: no such file or folder"),
        ("cpu#2", "CUDA error: device-side assert")]
    assert isinstance(state.failed[0].error, ModelNotFoundError)
    # 2. The owner heard each step: what is pending, then each device's outcome as it came.
    assert [(s.names, [f.worker_name for f in s.failed], len(s.pending)) for s in seen] == [
        ((), [], 3), ((), ["cpu#0"], 2), (("cpu#1",), ["cpu#0"], 1), (("cpu#1",), ["cpu#0", "cpu#2"], 0)]
    # 3. The job queued meanwhile runs on the device that loaded; the ETAs count one worker.
    hooks.expect = 1
    await asyncio.wait_for(hooks.done.wait(), 60)
    assert hooks.outcomes() == [("finished", 1)] and queue._workers == 1
    await pool.stop(close_engines=False)


async def test_no_device_loads_leaves_an_empty_pool_that_says_why(settings):
    def loader(s, device):
        raise ModelNotFoundError("[engine] model = /nowhere: no such file or folder")

    seen: list[PoolState] = []
    pool = WorkerPool(settings, JobQueue(), Recorder(), loader=loader, devices=["cpu"], on_change=seen.append)
    state = await pool.start()
    assert state.done and state.workers == () and pool.workers == []
    assert [str(f.error) for f in state.failed] == ["[engine] model = /nowhere: no such file or folder"]
    assert seen[-1] is state


async def test_a_failing_callback_does_not_stop_the_pool(engine, settings):
    def on_change(state):
        raise ValueError("the owner's bug")

    pool = WorkerPool(settings, JobQueue(), Recorder(), loader=lambda s, d: engine, devices=["cpu"],
                      on_change=on_change)
    assert (await pool.start()).names == ("cpu#0",)
    await pool.stop(close_engines=False)
