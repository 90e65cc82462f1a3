"""Workers with the real tiny engine on the CPU: order, faults, OOM retry, cancel, batching (several devices: test_pool.py)."""
from __future__ import annotations

import asyncio

import pytest

from engine.errors import EngineOutOfMemory
from engine.queue import JobQueue
from engine.settings import EngineSettings
from engine.spec import JobSpec
from engine.worker import MAX_LOSSES, Worker
from tests.support.engines import SeamEngine
from tests.support.hooks import Recorder

SIZE = 256  # the engine's smallest size


@pytest.fixture(scope="module")
def settings(tiny_model_dir) -> EngineSettings:
    return EngineSettings(model="tiny-random", models_dir=str(tiny_model_dir.parent), profile="resident",
                          max_sequence_length=64)


@pytest.fixture(scope="module")
def engine(settings) -> SeamEngine:
    return SeamEngine.load(settings, "cpu")


@pytest.fixture(autouse=True)
def clean_engine(engine):
    yield
    engine.reset()
    if engine.profile != "resident":
        engine.set_profile("resident")


def spec(prompt="a red fox", steps=1, **kw) -> JobSpec:
    kw.setdefault("seed", 3)
    return JobSpec(prompt, steps=steps, width=kw.pop("width", SIZE), height=kw.pop("height", SIZE), **kw)


async def run_jobs(worker: Worker, hooks: Recorder, jobs: dict[int, JobSpec], timeout=60.0):
    hooks.expect = len(jobs)
    for jid, s in jobs.items():
        worker.queue.submit(jid, s)
    worker.start()
    await asyncio.wait_for(hooks.done.wait(), timeout)
    await worker.stop(close_engine=False)


async def test_jobs_run_in_order_with_progress_and_images(engine):
    hooks, queue = Recorder(), JobQueue()
    worker = Worker("cpu#0", engine, queue, hooks)
    await run_jobs(worker, hooks, {1: spec("a cat", steps=2), 2: spec("a dog"), 3: spec("a cat", count=2)})
    assert [e[1] for e in hooks.log if e[0] == "started"] == [1, 2, 3]
    assert hooks.kinds(1) == ["started", "progress", "progress", "finished"]
    assert [e[2:] for e in hooks.log if e[0] == "progress" and e[1] == 1] == [(1, 2), (2, 2)]
    assert hooks.results[3].seeds == [3, 4] and len(hooks.results[3].images) == 2
    assert hooks.results[2].images[0].size == (SIZE, SIZE)
    assert worker.jobs_done == 3 and len(queue) == 0 and queue.running() == {}
    assert queue.eta.estimate(spec("a dog")) > 0  # it learnt from the runs


async def test_failing_jobs_do_not_stop_the_worker(engine):
    engine.explode.add("boom")
    hooks, queue = Recorder(), JobQueue()
    worker = Worker("cpu#0", engine, queue, hooks)
    await run_jobs(worker, hooks, {1: spec("a cat"), 2: spec("boom"), 3: spec("a cat", width=100), 4: spec("a dog")})
    outcomes = {e[1]: e for e in hooks.outcomes()}
    assert outcomes[1][0] == outcomes[4][0] == "finished"
    assert outcomes[2][0] == "failed" and "RuntimeError: seam: boom" in outcomes[2][2]
    assert outcomes[3][0] == "failed" and "Width 100 is not allowed" in outcomes[3][2]


async def test_out_of_memory_retries_once_on_the_leaner_profile(engine):
    engine.oom_once.add("big")
    hooks, queue = Recorder(), JobQueue()
    worker = Worker("cpu#0", engine, queue, hooks)
    await run_jobs(worker, hooks, {1: spec("big")})
    assert hooks.outcomes() == [("finished", 1)]
    assert engine.profile == "streamed" and hooks.results[1].profile == "streamed"
    assert engine.batches == [["big"], ["big"]]


async def test_out_of_memory_twice_fails_with_the_advice(engine):
    hooks, queue = Recorder(), JobQueue()
    worker = Worker("cpu#0", engine, queue, hooks)
    original = engine.generate_batch

    def always_oom(specs, **kw):
        raise EngineOutOfMemory("out of GPU memory; try a smaller size", profile=engine.profile,
                                suggested_profile="streamed" if engine.profile == "resident" else None)

    engine.generate_batch = always_oom
    try:
        await run_jobs(worker, hooks, {1: spec("big"), 2: spec("small")})
    finally:
        del engine.generate_batch
    assert hooks.outcomes()[0] == ("failed", 1, "out of GPU memory; try a smaller size")
    assert engine.generate_batch == original


async def test_cancel_a_running_job_stops_it_at_the_next_step(engine):
    hooks, queue = Recorder(), JobQueue()
    worker = Worker("cpu#0", engine, queue, hooks)

    def on_progress(job_id, step, total):
        hooks.log.append(("progress", job_id, step, total))
        if job_id == 1 and step == 1:
            assert worker.cancel(1)

    hooks.on_progress = on_progress
    await run_jobs(worker, hooks, {1: spec("a long one", steps=30), 2: spec("next")})
    assert hooks.outcomes() == [("cancelled", 1), ("finished", 2)]
    steps_seen = [e[2] for e in hooks.log if e[0] == "progress" and e[1] == 1]
    assert max(steps_seen) < 30
    assert worker.cancel(1) is False  # no longer running


async def test_batching_runs_same_kind_jobs_together(engine):
    hooks, queue = Recorder(), JobQueue()
    worker = Worker("cpu#0", engine, queue, hooks, max_batch=3)
    await run_jobs(worker, hooks, {1: spec("one"), 2: spec("two", width=320), 3: spec("three"), 4: spec("four"),
                                   5: spec("five")})
    assert engine.batches == [["one", "three", "four"], ["two"], ["five"]]
    assert sorted(e[1] for e in hooks.outcomes()) == [1, 2, 3, 4, 5]
    assert all(e[0] == "finished" for e in hooks.outcomes())
    assert hooks.results[3].seeds == [3] and hooks.results[3].spec.prompt == "three"


async def test_a_batch_with_a_bad_job_falls_back_to_one_at_a_time(engine):
    engine.explode.add("boom")
    hooks, queue = Recorder(), JobQueue()
    worker = Worker("cpu#0", engine, queue, hooks, max_batch=4)
    await run_jobs(worker, hooks, {1: spec("a cat"), 2: spec("boom"), 3: spec("a dog")})
    assert {e[1]: e[0] for e in hooks.outcomes()} == {1: "finished", 2: "failed", 3: "finished"}


async def test_stop_leaves_the_running_job_without_an_outcome(engine):
    hooks, queue = Recorder(), JobQueue()
    worker = Worker("cpu#0", engine, queue, hooks)
    first_step = asyncio.Event()
    hooks.on_progress = lambda jid, step, total: first_step.set()
    queue.submit(1, spec("long", steps=40))
    worker.start()
    await asyncio.wait_for(first_step.wait(), 30)
    await asyncio.wait_for(worker.stop(close_engine=False), 30)
    assert hooks.outcomes() == [] and queue.running() == {}


async def test_a_lost_engine_puts_the_job_back_at_the_head_of_its_owners_turn_and_the_worker_goes_on(engine):
    hooks, queue = Recorder(), JobQueue()
    worker = Worker("ray:a#0", engine, queue, hooks)
    hooks.expect = 3
    queue.submit(1, spec("lost-once"), owner=10)  # its device goes away once (a Ray actor died, then restarted)
    queue.submit(2, spec("a dog"), owner=10)
    queue.submit(3, spec("a cat"), owner=20)
    worker.start()
    await asyncio.wait_for(hooks.done.wait(), 60)
    # Job 1 waited again ahead of everyone (user 20's 3, its own 2), ran once more and finished; nothing failed.
    assert [e[1] for e in hooks.log if e[0] == "started"] == [1, 1, 3, 2]
    assert hooks.kinds(1) == ["started", "requeued", "started", "progress", "finished"]
    assert hooks.outcomes() == [("finished", 1), ("finished", 3), ("finished", 2)]
    assert engine.reconnects == 1 and not worker._task.done()
    await worker.stop(close_engine=False)


async def test_a_job_lost_three_times_fails_and_a_worker_whose_engine_is_gone_stops(engine):
    hooks, queue = Recorder(), JobQueue()
    worker = Worker("ray:a#0", engine, queue, hooks)
    # 1. A job that loses its device every time fails after MAX_LOSSES tries, with a message; the next job runs.
    hooks.expect = 2
    queue.submit(1, spec("lost"), owner=10)
    queue.submit(2, spec("a dog"), owner=20)
    worker.start()
    await asyncio.wait_for(hooks.done.wait(), 60)
    assert hooks.kinds(1) == ["started", "requeued"] * (MAX_LOSSES - 1) + ["started", "failed"]
    assert hooks.by_job()[1][2].startswith(f"the GPU running this job stopped {MAX_LOSSES} times")
    assert hooks.by_job()[2] == ("finished", 2)
    # 2. When the engine does not come back (its node left the cluster), the job waits for another worker and this
    #    worker ends.
    engine.comes_back = False
    queue.submit(3, spec("lost-once"), owner=10)
    await asyncio.wait_for(worker._task, 60)
    assert [j.job_id for j in queue.waiting()] == [3] and not queue.running()
    assert hooks.kinds(3) == ["started", "requeued"]
    await worker.stop(close_engine=False)
