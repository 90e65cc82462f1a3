"""Warming up (engine/warm_up.py, engine/queue.py, engine/worker.py): while a compiled engine compiles the DiT's
blocks for a new shape, the queue says so (a RUNNING event with warming_up) instead of a step-based ETA, says when
the first step is done, and does not learn the compile time as the time of that kind of job."""
from __future__ import annotations

import asyncio

import pytest
import torch

from engine.compile import uncompile_blocks
from engine.queue import JobQueue, QueueEvent
from engine.spec import JobSpec
from engine.streamer_flux import dit_blocks
from engine.warm_up import CompileState
from engine.worker import Worker
from tests.support.compiled_engines import load_compiled
from tests.support.hooks import Recorder


@pytest.fixture
def compiled_engine(tiny_settings):
    torch._dynamo.reset()
    engine = load_compiled(tiny_settings, "cpu")
    yield engine
    uncompile_blocks(dit_blocks(engine.pipe))
    engine.close()


async def test_the_queue_says_warming_up_for_a_new_shape_and_learns_nothing_from_it(compiled_engine):
    hooks, queue = Recorder(), JobQueue()
    events: list[QueueEvent] = []
    queue.subscribe(events.append)
    worker = Worker("cpu#0", compiled_engine, queue, hooks)
    cat = JobSpec("a cat", seed=1, steps=2, width=256, height=256)
    default = queue.eta.estimate(cat)
    hooks.expect = 1
    queue.submit(1, cat)
    worker.start()
    await asyncio.wait_for(hooks.done.wait(), 300)
    warming = [(e.job_id, e.warming_up) for e in events if e.warming_up or (e.worker and e.job_id == 1)]
    assert (1, True) in warming and warming[-1] == (1, False)          # up while compiling, down at step 1
    assert queue.eta.estimate(cat) == default                           # the compile time was not learnt
    # the same shape again: no warming up, and now the queue learns
    events.clear()
    hooks.done.clear()
    hooks.expect = 2
    queue.submit(2, JobSpec("a dog", seed=2, steps=2, width=256, height=256))
    await asyncio.wait_for(hooks.done.wait(), 300)
    await worker.stop(close_engine=False)
    assert not any(e.warming_up for e in events)
    assert queue.eta.estimate(cat) != default


def test_compile_state_tracks_shapes_and_lora_sets():
    state = CompileState(enabled=True)
    assert state.begin(1, 1024, 1024) and state.warming_up
    state.end(1, 1024, 1024, completed=True)
    assert not state.warming_up and not state.needs_warm_up(1, 1024, 1024)
    assert state.needs_warm_up(1, 1024, 1024, (("style", None, None, 0.8),))   # a LoRA set may compile again
    assert not state.begin(1, 1024, 1024)
    state.end(2, 512, 512, completed=False)                                    # a failed first step: not warm
    assert state.needs_warm_up(2, 512, 512)
    assert not CompileState(enabled=False).needs_warm_up(1, 64, 64)            # eager engines never warm up
