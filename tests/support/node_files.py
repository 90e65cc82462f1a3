"""Each node of a simulated Ray cluster reading "its own" model files (tests/engine/test_ray_model_check.py).

The nodes of `ray.cluster_utils.Cluster` share this machine's disk, so the same `[engine] models_dir` is the same
folder on all of them. A node started with the environment variable `NODE_MODELS_ENV` (`Cluster.add_node(env_vars=
…)`: its raylet and the worker processes it starts have it) plays a host whose `models_dir` holds other files:
`node_files_loader`, run in each engine actor, loads the real engine (`Engine.load`, which hashes the weights into
`model_id`) from that folder instead. Nothing else changes: the model's name and every other setting are the bot's.
"""
from __future__ import annotations

import os
from dataclasses import replace

from engine.pipeline import Engine
from engine.settings import EngineSettings

NODE_MODELS_ENV = "FLUXBOT_TEST_NODE_MODELS_DIR"
NODE_FILES_LOADER = f"{__name__}:node_files_loader"  # "module:function", as RayWorkerPool's loader names one


def node_files_loader(settings: EngineSettings, device: str) -> Engine:
    """`loader(settings, device)` in an engine actor: the engine from this node's own `models_dir`."""
    own = os.environ.get(NODE_MODELS_ENV)
    return Engine.load(replace(settings, models_dir=own) if own else settings, device)
