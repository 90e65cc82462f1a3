"""Ray set-ups the Ray tests share (import after `pytest.importorskip("ray")`):

- `simulated_cluster(gpu_nodes)`: a `ray.cluster_utils.Cluster` on this machine — a head without GPUs and
  `gpu_nodes` nodes of one CPU and one logical GPU each — with the test process as Ray's driver (the engine's pool
  tests: tests/engine/test_ray_pool.py, test_ray_model_check.py);
- `tiny_settings(tiny_model_dir)`: the engine settings those tests' actors load the tiny model with;
- `start_bot_on_local_ray(...)`: the bot with `backend = "ray"` starting its own local instance (one logical GPU) and
  its actor through the seam loader, once its one worker is ready (tests/e2e/test_ray_backend.py,
  test_ray_failover.py);
- `until(condition, what)`: wait for a cluster's asynchronous change (a node's worker, a restart), failing with `what`.
"""
from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from bot.app import build_bot
from engine.ray_settings import RaySettings
from engine.settings import TINY, EngineSettings
from tests.support.engines import SEAM_LOADER

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 120  # generous: 2 shared cores, Ray's processes included


@contextmanager
def simulated_cluster(gpu_nodes: int):
    """(cluster, [its GPU nodes]); Ray is shut down and the cluster removed on exit."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(gpu_nodes)]
    ray.init(address=cluster.address, namespace="fluxbot-tests", runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


def tiny_settings(tiny_model_dir: Path) -> EngineSettings:
    return EngineSettings(model=TINY, models_dir=str(tiny_model_dir.parent), profile="resident",
                          max_sequence_length=64, engine_process="never", devices=["cpu"])


async def start_bot_on_local_ray(start_bot, rel_config, monkeypatch):
    """The bot of `rel_config` on `backend = "ray"` (a local instance of its own), started, its one worker ready."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the actor imports the seam loader from tests/
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = replace(rel_config(engine={"backend": "ray"}), ray=RaySettings(local_gpus=1, poll_s=0.5))
    bot = await start_bot(await build_bot(config, engine_loader=SEAM_LOADER))
    assert await bot.engines.wait_loaded() == 1
    return bot


async def until(condition, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
