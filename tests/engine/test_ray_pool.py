"""GPU workers on a Ray cluster (engine/ray_pool.py, engine/ray_engine.py), with real Ray on the CPU.

One `ray.cluster_utils.Cluster` for the module: a head without GPUs and two nodes that each advertise one logical
GPU, so the pool starts one engine actor per node (the tiny model, on the CPU, with the fault seams of
tests/support/engines.py: a "slow" prompt sleeps 0.3 s per step). One pool serves the module's tests in order (an
actor loads torch and the model: seconds each on 2 cores); the last tests change the membership (a node killed,
one added). Skipped only when Ray is not installed (`pip install -e '.[ray]'`; CI installs it).
"""
from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import pytest
import pytest_asyncio

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")

from engine.queue import JobQueue  # noqa: E402
from engine.ray_pool import RayWorkerPool, mismatch, node_models  # noqa: E402
from engine.ray_settings import RaySettings  # noqa: E402
from engine.settings import TINY, EngineSettings  # noqa: E402
from engine.spec import JobSpec  # noqa: E402
from tests.support.engines import PROBE, SEAM_LOADER  # noqa: E402
from tests.support.hooks import Recorder  # noqa: E402
from tests.support.ray_cluster import WAIT_S, simulated_cluster, tiny_settings, until  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

SIZE = 256  # the engine's smallest size


def spec(prompt: str, seed: int, steps: int = 2) -> JobSpec:
    return JobSpec(prompt, seed=seed, steps=steps, width=SIZE, height=SIZE)


@pytest.fixture(scope="module")
def cluster():
    """A head without GPUs and two nodes with one logical GPU each; the test process is Ray's driver."""
    with simulated_cluster(gpu_nodes=2) as (c, _nodes):
        yield c


@pytest.fixture(scope="module")
def settings(tiny_model_dir) -> EngineSettings:
    return tiny_settings(tiny_model_dir)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(cluster, settings):
    """The pool of the module: its queue and Recorder hooks are `pool.queue`, `pool.hooks`."""
    p = RayWorkerPool(settings, RaySettings(poll_s=0.5), JobQueue(), Recorder(), loader=SEAM_LOADER)
    await p.start()
    yield p
    await p.stop()


async def run_jobs(pool, jobs: dict[int, JobSpec]) -> Recorder:
    """Submit the jobs and wait until each has an outcome; returns the hooks."""
    hooks: Recorder = pool.hooks
    hooks.expect = len(hooks.outcomes()) + len(jobs)
    hooks.done.clear()
    for jid, s in jobs.items():
        pool.queue.submit(jid, s, owner=jid % 3)
    await asyncio.wait_for(hooks.done.wait(), WAIT_S)
    return hooks


def outcome_counts(hooks: Recorder, job_id: int) -> dict[str, int]:
    kinds = hooks.kinds(job_id)
    return {k: kinds.count(k) for k in ("started", "requeued", "finished", "failed", "cancelled")}


async def test_one_worker_per_logical_gpu_and_every_job_runs_exactly_once_with_progress(pool):
    # 1. Two nodes with a GPU each: two workers, on two different nodes, same model; the head (no GPU) has none.
    assert len(pool.workers) == 2 and pool.state.failed == () and pool.state.pending == ()
    assert len({w.engine.node_id for w in pool.workers}) == 2
    assert {w.engine.model_id for w in pool.workers} == {pool.model_id} and pool.model_id.startswith(TINY)
    # 2. Six jobs of three users: each starts once and finishes once, both workers serve, progress per step.
    hooks = await run_jobs(pool, {jid: spec(f"job {jid}", jid) for jid in range(1, 7)})
    for jid in range(1, 7):
        assert outcome_counts(hooks, jid) == {"started": 1, "requeued": 0, "finished": 1, "failed": 0,
                                              "cancelled": 0}, hooks.kinds(jid)
        assert [e[2:] for e in hooks.log if e[0] == "progress" and e[1] == jid] == [(1, 2), (2, 2)]
        result = hooks.results[jid]
        assert result.images[0].size == (SIZE, SIZE) and result.seeds == [jid] and result.model_id == pool.model_id
    assert all(w.jobs_done > 0 for w in pool.workers), [w.jobs_done for w in pool.workers]


async def test_cancel_reaches_a_running_job_at_its_next_step(pool):
    hooks: Recorder = pool.hooks
    hooks.expect = len(hooks.outcomes()) + 1
    hooks.done.clear()
    pool.queue.submit(20, spec("slow", 20, steps=20))  # 0.3 s a step: 6 s if nothing stops it
    await until(lambda: ("progress", 20, 2, 20) in hooks.log, "job 20's second step")
    assert any(w.cancel(20) for w in pool.workers)
    started = time.monotonic()
    await asyncio.wait_for(hooks.done.wait(), WAIT_S)
    assert hooks.by_job()[20] == ("cancelled", 20) and time.monotonic() - started < 10
    steps = [e[2] for e in hooks.log if e[0] == "progress" and e[1] == 20]
    assert max(steps) < 20, steps  # it stopped at a step boundary, long before its end


async def test_same_seed_on_two_different_actors_gives_identical_pixels(pool):
    a, b = pool.workers[0].engine, pool.workers[1].engine
    assert a.node_id != b.node_id and a.pid != b.pid
    same = JobSpec("a lighthouse at dusk", seed=1234, steps=2, width=SIZE, height=SIZE)
    ra, rb = await asyncio.gather(asyncio.to_thread(a.generate, same), asyncio.to_thread(b.generate, same))
    assert np.array_equal(np.asarray(ra.images[0]), np.asarray(rb.images[0]))
    other = await asyncio.to_thread(b.generate, JobSpec("a lighthouse at dusk", seed=1235, steps=2, width=SIZE,
                                                        height=SIZE))
    assert not np.array_equal(np.asarray(ra.images[0]), np.asarray(other.images[0]))


def send(actor, rid: int, op: str, payload):
    """One request straight to an actor, as a `RayEngine` sends it (from a second sender: a RayEngine is used from
    one thread at a time); its reply."""
    *_, last = (ray.get(ref) for ref in actor.run.options(num_returns="streaming").remote(rid, op, payload))
    assert last[0] == "done", last
    return last[1]


async def test_an_actor_runs_one_request_at_a_time_on_one_long_lived_engine_thread(pool):
    engine = pool.workers[0].engine
    # 1. A request holds the engine 1 s; a second one is sent while it runs: it starts only once the first ended.
    first = asyncio.create_task(asyncio.to_thread(send, engine.actor, 9001, "call", (PROBE, 1.0)))
    await asyncio.sleep(0.3)
    sent = time.time()
    second = await asyncio.to_thread(send, engine.actor, 9002, "call", (PROBE, 0.0))
    first = await first
    assert sent < first.end, "the second request was not sent while the first ran"
    assert second.start >= first.end, (first, second)
    # 2. A real job in between, then a third request: all on the one engine thread, which keeps what earlier
    #    requests left in it (as cuDNN keeps its attention plans per thread: a fresh thread per job rebuilt them).
    result = await asyncio.to_thread(engine.generate, spec("between", 61))
    assert result.images[0].size == (SIZE, SIZE)
    third = await asyncio.to_thread(send, engine.actor, 9003, "call", (PROBE, 0.0))
    assert first.thread == second.thread == third.thread, (first, second, third)
    assert (first.earlier, second.earlier, third.earlier) == (first.earlier, first.earlier + 1, first.earlier + 2)


async def test_an_actor_killed_mid_job_restarts_on_its_node_and_the_job_runs_again(pool):
    hooks: Recorder = pool.hooks
    hooks.expect = len(hooks.outcomes()) + 1
    hooks.done.clear()
    pool.queue.submit(30, spec("slow", 30, steps=6))
    await until(lambda: ("progress", 30, 1, 6) in hooks.log, "job 30's first step")
    worker = next(w for w in pool.workers if 30 in w.running_jobs())
    node, pid = worker.engine.node_id, worker.engine.pid
    os.kill(pid, signal.SIGKILL)  # the engine's process dies (OOM killer, segfault); its node stays
    await asyncio.wait_for(hooks.done.wait(), WAIT_S)
    # 1. The job went back to the queue once and finished once; its image is whole.
    assert outcome_counts(hooks, 30) == {"started": 2, "requeued": 1, "finished": 1, "failed": 0,
                                         "cancelled": 0}, hooks.kinds(30)
    assert hooks.results[30].images[0].size == (SIZE, SIZE) and not hooks.results[30].cancelled
    # 2. Ray restarted the actor on the same node (a new process, the model reloaded); the worker stayed.
    await until(lambda: worker.engine.restarts == 1, "the actor's restart")
    assert worker in pool.workers and len(pool.workers) == 2
    assert worker.engine.node_id == node and worker.engine.pid != pid


async def test_a_node_killed_mid_job_requeues_its_job_and_it_completes_on_another_node(pool, cluster):
    hooks: Recorder = pool.hooks
    hooks.expect = len(hooks.outcomes()) + 3
    hooks.done.clear()
    # Both workers busy: user 8's long job and user 7's job 40; user 7's job 41 waits behind them.
    pool.queue.submit(39, spec("slow", 39, steps=30), owner=8)  # 9 s: still busy when 40 comes back
    pool.queue.submit(40, spec("slow", 40, steps=6), owner=7)
    pool.queue.submit(41, spec("job 41 of user 7, after 40", 41), owner=7)
    await until(lambda: ("progress", 40, 1, 6) in hooks.log and ("progress", 39, 1, 30) in hooks.log,
                "jobs 39 and 40 running")
    doomed = next(w for w in pool.workers if 40 in w.running_jobs())
    survivor = next(w for w in pool.workers if w is not doomed)
    node = next(n for n in cluster.list_all_nodes() if n.node_id == doomed.engine.node_id)
    cluster.remove_node(node)  # the host goes away: its raylet and actor with it
    await asyncio.wait_for(hooks.done.wait(), WAIT_S)
    # 1. Job 40 went back at the head of its user's turn (ahead of 41), ran on the other node, finished once.
    assert outcome_counts(hooks, 40) == {"started": 2, "requeued": 1, "finished": 1, "failed": 0,
                                         "cancelled": 0}, hooks.kinds(40)
    finished = [e[1] for e in hooks.outcomes() if e[1] in (39, 40, 41)]
    assert finished == [39, 40, 41] and {e[0] for e in hooks.outcomes() if e[1] in (39, 41)} == {"finished"}
    assert survivor.jobs_done >= 3
    # 2. The dead node's worker left the pool; the ETAs count one worker.
    await until(lambda: len(pool.workers) == 1, "the dead node's worker to leave")
    assert pool.workers == [survivor] and pool.queue._workers == 1


async def test_a_node_that_joins_gets_a_worker_without_a_restart(pool, cluster, settings):
    before = {w.engine.node_id for w in pool.workers}
    node = cluster.add_node(num_cpus=1, num_gpus=1)
    await until(lambda: len(pool.workers) == 2, "the new node's worker")
    newcomer = next(w for w in pool.workers if w.engine.node_id not in before)
    assert newcomer.engine.node_id == node.node_id and pool.queue._workers == 2
    # It takes jobs: two slow jobs at once run one on each worker.
    hooks = await run_jobs(pool, {50: spec("slow", 50), 51: spec("slow", 51)})
    assert {hooks.by_job()[50][0], hooks.by_job()[51][0]} == {"finished"}
    assert newcomer.jobs_done >= 1
    # Every node that holds a worker reads the same model from its own files (`doctor --ray`).
    models = await asyncio.to_thread(node_models, settings, RaySettings())
    assert len(models) == 2 and {m.model_id for m in models} == {pool.model_id} and mismatch(models) is None
