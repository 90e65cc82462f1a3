"""A host whose files hold other weights gets no worker in the bot's Ray pool (engine/ray_pool.py, `_check_model`),
with real Ray on the CPU: not only `python -m bot doctor --ray` refuses such a cluster, the running bot does too, since
two actors with different weights would break "same seed, same pixels".

One `ray.cluster_utils.Cluster` for the module: a head without GPUs and a node with one logical GPU whose engine
actor loads the tiny model; the pool starts on it. A second GPU node then joins whose `models_dir` holds a tiny model
built with another seed (tests/support/node_files.py: the node's own folder, given through its environment), so its
`model_id` has another hash. Skipped only when Ray is not installed (`pip install -e '.[ray]'`; CI requires it).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")

from engine.models import model_id, resolve_source  # noqa: E402
from engine.queue import JobQueue  # noqa: E402
from engine.ray_pool import ModelMismatch, RayWorkerPool  # noqa: E402
from engine.ray_settings import RaySettings  # noqa: E402
from engine.settings import TINY, EngineSettings  # noqa: E402
from engine.spec import JobSpec  # noqa: E402
from engine.tiny import save_tiny  # noqa: E402
from tests.support.hooks import Recorder  # noqa: E402
from tests.support.node_files import NODE_FILES_LOADER, NODE_MODELS_ENV  # noqa: E402
from tests.support.ray_cluster import WAIT_S, simulated_cluster, tiny_settings, until  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

SIZE = 256
POLL_S = 0.5


@pytest.fixture(scope="module")
def cluster():
    """A head without GPUs and one node with a logical GPU (`cluster.good_node`); the test process is Ray's driver."""
    with simulated_cluster(gpu_nodes=1) as (c, (good,)):
        c.good_node = good
        yield c


@pytest.fixture(scope="module")
def settings(tiny_model_dir) -> EngineSettings:
    return tiny_settings(tiny_model_dir)


@pytest.fixture(scope="module")
def other_models_dir(tmp_path_factory) -> Path:
    """A `models_dir` whose tiny-random holds other weights: the same model, built with another seed."""
    folder = tmp_path_factory.mktemp("other-host-models")
    save_tiny(folder / TINY, seed=7)
    return folder


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(cluster, settings):
    p = RayWorkerPool(settings, RaySettings(poll_s=POLL_S), JobQueue(), Recorder(), loader=NODE_FILES_LOADER)
    await p.start()
    yield p
    await p.stop()


async def test_a_node_whose_files_hold_other_weights_gets_no_worker_and_is_named(pool, cluster, settings,
                                                                                 other_models_dir, caplog):
    caplog.set_level(logging.ERROR, logger="engine.ray_pool")
    # 1. The first node's engine set the model every worker must serve.
    (good,) = pool.workers
    served, other = (model_id(resolve_source(replace(settings, models_dir=str(d))))
                     for d in (settings.models_dir, other_models_dir))  # each folder's name@sha256, from its files
    assert pool.model_id == good.engine.model_id == served and other != served
    # 2. A second GPU host joins with other weights in its models_dir: its engine loads (another hash) and is refused.
    node = cluster.add_node(num_cpus=1, num_gpus=1, env_vars={NODE_MODELS_ENV: str(other_models_dir)})
    await until(lambda: pool.state.failed, "the new node's engine to be refused")
    (failure,) = pool.state.failed
    assert failure.device == node.node_id and isinstance(failure.error, ModelMismatch)
    name = failure.worker_name  # the slot: ray:<host>/<node id>#<index>
    assert name.startswith("ray:") and name.endswith(f"/{node.node_id[:8]}#0"), name
    assert str(failure.error).startswith(f"{name} loaded {other}, but the other workers serve {served}: "
                                         f"put the same weights on every host")
    # 3. The owner reads it in the log: the node and both models.
    logged = [r.getMessage() for r in caplog.records if r.name == "engine.ray_pool" and r.levelno == logging.ERROR]
    assert any(name in m and other in m and served in m for m in logged), logged
    # 4. The node has no worker, and its refused actor was removed: its GPU is free again.
    assert pool.workers == [good] and pool.queue._workers == 1 and pool.state.pending == ()
    await until(lambda: ray.available_resources().get("GPU", 0) == 1, "the refused actor's GPU to be free")
    # 5. Jobs run on the good node, with its model; the refused node is not tried again while it stays.
    hooks: Recorder = pool.hooks
    hooks.expect = 4
    for jid in range(1, 5):
        pool.queue.submit(jid, JobSpec(f"job {jid}", seed=jid, steps=2, width=SIZE, height=SIZE), owner=jid % 2)
    await asyncio.wait_for(hooks.done.wait(), WAIT_S)
    assert {e[0] for e in hooks.outcomes()} == {"finished"} and len(hooks.outcomes()) == 4
    assert good.jobs_done == 4 and {r.model_id for r in hooks.results.values()} == {served}
    await asyncio.sleep(3 * POLL_S)  # a few membership polls
    assert pool.workers == [good] and pool.state.failed == (failure,) and not pool._loading


async def test_with_only_other_weights_on_the_cluster_the_bots_own_copy_decides_and_nothing_serves(
        pool, cluster, settings, other_models_dir):
    """The reference is the bot's own copy of the model, read before any actor starts: which node loads first does
    not matter. Here every GPU node left holds other weights; taking the first engine that loads as the reference
    would have served them."""
    served, other = (model_id(resolve_source(replace(settings, models_dir=str(d))))
                     for d in (settings.models_dir, other_models_dir))
    # 1. The good node leaves; a host with other weights is (or stays) on the cluster.
    cluster.remove_node(cluster.good_node)
    bad = cluster.add_node(num_cpus=1, num_gpus=1, env_vars={NODE_MODELS_ENV: str(other_models_dir)})
    # 2. A bot starting now reads its own files first, so every engine on the cluster is refused, naming both models.
    fresh = RayWorkerPool(settings, RaySettings(poll_s=POLL_S), JobQueue(), Recorder(), loader=NODE_FILES_LOADER,
                          local_reference=True)
    try:
        await fresh.start()
        await until(lambda: bad.node_id in {f.device for f in fresh.state.failed}, "the other weights to be refused")
        assert fresh.workers == [] and fresh.model_id == served
        for failure in fresh.state.failed:
            assert isinstance(failure.error, ModelMismatch)
            assert f"loaded {other}, but the bot's own files give {served}: put the same weights" in str(failure.error)
    finally:
        await fresh.stop()

