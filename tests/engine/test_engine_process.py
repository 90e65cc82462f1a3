"""Engines in child processes ([engine] engine_process): the real tiny engine, spawned children, the real
worker loop. Two CPU "devices"; the children are shared by the module (each costs ~3 s to start)."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import replace

import pytest

from engine.engine_process import ProcessEngine, choose_loader, wants_process
from engine.errors import EngineError, EngineOutOfMemory, ModelNotFoundError
from engine.pipeline import Engine
from engine.queue import JobQueue
from engine.settings import EngineSettings
from engine.spec import JobSpec
from engine.worker import Worker
from tests.support.engines import SEAM_LOADER, seam_loader
from tests.support.hooks import Recorder

SIZE = 256


# --------------------------------------------------------------------------------- run in the child

def peak_note(engine, label: str) -> str:
    """Runs in the child through ProcessEngine.call."""
    return f"{label}:{type(engine).__name__}:{os.getpid()}"


# ----------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def settings(tiny_model_dir) -> EngineSettings:
    return EngineSettings(model="tiny-random", models_dir=str(tiny_model_dir.parent), profile="resident",
                          devices=["cpu", "cpu"], engine_process="always", max_sequence_length=64)


@pytest.fixture(scope="module")
def engines(settings):
    """Two engines loaded through Worker.load, as the bot loads them: each in its own child process."""
    async def load(i: int):
        worker = await Worker.load(f"cpu#{i}", settings, "cpu", JobQueue(), Recorder(), loader=SEAM_LOADER)
        worker._executor.shutdown(wait=True)  # the tests wrap the engine in fresh workers
        return worker.engine

    loaded = [asyncio.run(load(i)) for i in range(2)]
    yield loaded
    for e in loaded:
        e.close()


@pytest.fixture(autouse=True)
def resident_again(engines):
    yield
    for e in engines:
        if e.pid is not None and e.profile != "resident":
            e.set_profile("resident")


def spec(prompt="a red fox", steps=1, **kw) -> JobSpec:
    kw.setdefault("seed", 3)
    return JobSpec(prompt, steps=steps, width=kw.pop("width", SIZE), height=kw.pop("height", SIZE), **kw)


async def run_jobs(workers: list[Worker], hooks: Recorder, jobs: dict[int, JobSpec], timeout=90.0) -> None:
    hooks.done, hooks.expect = asyncio.Event(), len(jobs)
    for jid, s in jobs.items():
        workers[0].queue.submit(jid, s)
    for w in workers:
        w.start()
    await asyncio.wait_for(hooks.done.wait(), timeout)
    for w in workers:
        await w.stop(close_engine=False)


def one_worker(engine) -> tuple[Worker, Recorder]:
    hooks = Recorder()
    return Worker("cpu#0", engine, JobQueue(), hooks), hooks


# ------------------------------------------------------------------------------------------------- tests

def test_the_setting_decides_where_engines_run(settings):
    assert wants_process("auto", ["cuda:0", "cuda:1"]) and not wants_process("auto", ["cuda:0"])
    assert not wants_process("auto", ["cpu", "cpu"]) and wants_process("always", ["cpu"])
    assert not wants_process("never", ["cuda:0", "cuda:1"])
    assert choose_loader("w", replace(settings, engine_process="auto"), None) == Engine.load
    assert choose_loader("w", replace(settings, engine_process="never"), SEAM_LOADER) is seam_loader
    with pytest.raises(ValueError, match="engine_process"):
        wants_process("sometimes", ["cpu"])


def test_workers_load_each_engine_in_its_own_process(engines):
    assert all(isinstance(e, ProcessEngine) for e in engines)
    pids = {e.pid for e in engines}
    assert len(pids) == 2 and os.getpid() not in pids
    assert engines[0].model_id.startswith("tiny-random@") and engines[0].profile == "resident"
    assert engines[0].call(f"{__name__}:peak_note", "x") == f"x:SeamEngine:{engines[0].pid}"
    with pytest.raises(EngineError, match="could not be sent back"):  # and the child goes on serving
        engines[0].call(f"{__name__}:unpicklable")
    assert engines[0].call(f"{__name__}:peak_note", "y").startswith("y:")


def unpicklable(engine):
    """Runs in the child through ProcessEngine.call."""
    return lambda: None


async def test_two_workers_run_every_job_once(engines):
    queue, hooks = JobQueue(workers=2), Recorder()
    workers = [Worker(f"cpu#{i}", e, queue, hooks) for i, e in enumerate(engines)]
    await run_jobs(workers, hooks, {jid: spec(f"job {jid}", seed=jid) for jid in range(12)})
    assert sorted(hooks.by_job()) == list(range(12))
    assert all(e[0] == "finished" for e in hooks.by_job().values())
    assert sorted(e[1] for e in hooks.log if e[0] == "started") == list(range(12))  # each started once
    assert all(w.jobs_done > 0 for w in workers), [w.jobs_done for w in workers]


async def test_pixels_and_progress_match_the_in_process_engine(engines, tiny_engine):
    import numpy as np

    worker, hooks = one_worker(engines[0])
    job = spec("a lighthouse in a storm", steps=3, seed=42, count=2)
    await run_jobs([worker], hooks, {1: job})
    assert [e[2:] for e in hooks.log if e[0] == "progress"] == [(1, 3), (2, 3), (3, 3)]
    assert [e[0] for e in hooks.log] == ["started", "progress", "progress", "progress", "finished"]
    remote = hooks.results[1]
    local = tiny_engine.generate(job)
    assert remote.seeds == local.seeds == [42, 43] and remote.model_id == local.model_id
    for a, b in zip(remote.images, local.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))


async def test_cancel_of_a_running_job_is_prompt(engines):
    worker, hooks = one_worker(engines[0])

    def on_progress(job_id, step, total):
        hooks.log.append(("progress", job_id, step, total))
        if job_id == 1 and step == 1:
            assert worker.cancel(1)

    hooks.on_progress = on_progress
    t0 = time.monotonic()
    await run_jobs([worker], hooks, {1: spec("slow", steps=30), 2: spec("next")})
    assert hooks.by_job()[1] == ("cancelled", 1) and hooks.by_job()[2][0] == "finished"
    assert max(e[2] for e in hooks.log if e[0] == "progress" and e[1] == 1) <= 3
    assert time.monotonic() - t0 < 5  # 30 slow steps would take 9 s


async def test_engine_errors_fail_that_job_only(engines):
    worker, hooks = one_worker(engines[1])
    await run_jobs([worker], hooks, {1: spec("a cat"), 2: spec("boom"), 3: spec("a cat", width=100),
                                     4: spec("a dog")})
    outcomes = hooks.by_job()
    assert outcomes[1][0] == outcomes[4][0] == "finished"
    assert outcomes[2][0] == "failed" and "RuntimeError: seam: boom" in outcomes[2][2]
    assert outcomes[3] == ("failed", 3, "Width 100 is not allowed: use a multiple of 16 from 256 to 2048.")


async def test_out_of_memory_crosses_with_its_profiles_and_the_retry_goes_leaner(engines):
    worker, hooks = one_worker(engines[1])
    await run_jobs([worker], hooks, {1: spec("oom-once")})
    assert hooks.by_job()[1][0] == "finished"
    assert engines[1].profile == "streamed" and hooks.results[1].profile == "streamed"
    with pytest.raises(EngineOutOfMemory) as caught:  # the type and its fields survive the pipe
        engines[1].call(f"{__name__}:raise_oom")
    assert caught.value.profile == "streamed" and caught.value.suggested_profile == "model-offload"


def raise_oom(engine):
    """Runs in the child through ProcessEngine.call."""
    raise EngineOutOfMemory("out of GPU memory (seam)", profile=engine.profile, suggested_profile="model-offload")


async def test_a_killed_child_fails_its_job_and_the_next_job_gets_a_new_one(engines, caplog):
    caplog.set_level(logging.INFO)
    engine = engines[1]
    old_pid = engine.pid
    worker, hooks = one_worker(engine)

    def on_progress(job_id, step, total):
        hooks.log.append(("progress", job_id, step, total))
        if job_id == 1 and step == 1:
            os.kill(old_pid, signal.SIGKILL)

    hooks.on_progress = on_progress
    await run_jobs([worker], hooks, {1: spec("slow", steps=30), 2: spec("after the crash")})
    outcomes = hooks.by_job()
    assert outcomes[1] == ("failed", 1, "the engine process for cpu exited with code -9 (signal SIGKILL) during "
                                        "this job (killed, or it crashed: the log may say why); a new one starts "
                                        "for the next job")
    assert outcomes[2][0] == "finished" and len(hooks.results[2].images) == 1
    assert engine.pid not in (None, old_pid) and engine.restarts == 1
    # the new child's load was logged here, through the parent's loggers
    assert any(r.name == "engine.pipeline" and r.processName.startswith("fluxbot-engine") for r in caplog.records)


async def test_a_bad_model_path_fails_worker_load_with_the_engine_message(settings, tmp_path):
    bad = replace(settings, model=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelNotFoundError) as in_process:
        Engine.load(bad, "cpu")
    with pytest.raises(ModelNotFoundError) as in_child:
        await Worker.load("cpu#0", bad, "cpu", JobQueue(), Recorder())
    assert str(in_child.value) == str(in_process.value) and str(tmp_path) in str(in_child.value)


def test_close_ends_the_child(engines):  # last: it closes one of the module's engines
    engine = engines[0]
    pid = engine.pid
    engine.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(EngineError, match="closed"):
        engine.generate(spec())


def test_the_parent_follows_the_childs_recipe_when_a_replan_drops_the_bf16_copy(tiny_settings):
    """The bf16 working copy (engine/bf16_copy.py) changes the child's recipe after loading: the parent side learns it
    with the reply, so /show's "pixels may differ" note and the warming-up flag follow what the child runs."""
    from tests.support.compiled_engines import COPY_LOADER

    engine = ProcessEngine.start(replace(tiny_settings, compute="bf16"), "cpu", loader=COPY_LOADER)
    try:
        assert engine.recipe.compute == "bf16.copy" and "bf16.copy" in engine.recipe_computes
        made = engine.generate(spec())
        assert made.recipe["compute"] == "bf16.copy" and engine.recipe_differences(made.recipe) == []
        assert not engine.needs_warm_up(spec())
        engine.set_profile("streamed")                        # streamed blocks: the child drops its copy
        assert engine.recipe.compute == "bf16" and "bf16.copy" not in engine.recipe_computes
        assert engine.recipe_differences(made.recipe) == ["matmul compute: bf16 now, bf16 (working copy) then"]
        assert engine.needs_warm_up(spec())                   # the child's Linears changed class
        engine.set_profile("resident")
        assert engine.recipe.compute == "bf16.copy"
    finally:
        engine.close()


def test_after_a_switched_compiled_job_the_parent_expects_the_child_to_compile_again(tiny_settings):
    """A /show job made with another compute under compiled blocks drops the child's compiled code around it
    (engine/recipe_switch.py): the parent's warming-up flag says so for the next job of the engine's own recipe."""
    from tests.support.compiled_engines import COMPILED_LOADER

    engine = ProcessEngine.start(replace(tiny_settings, compute="bf16"), "cpu", loader=COMPILED_LOADER)
    try:
        engine.generate(spec())
        assert not engine.needs_warm_up(spec())
        fp8 = {**engine.recipe.to_dict(), "compute": "fp8.row-fast"}
        assert engine.generate(spec(recipe=fp8)).recipe == fp8
        assert engine.needs_warm_up(spec())
    finally:
        engine.close()
