"""`python -m bot doctor --ray`: can the Ray cluster of `[ray]` run the bot's workers (docs/scale-out.md)?

It joins the cluster (`[ray] address`; empty: a local instance, as the bot would start), lists each alive node with
how many workers its resources hold, and has every node that holds workers read the model from its own files
(`engine.ray_pool.node_models`: name@sha256 of the DiT weights, cached beside them). FAIL when Ray is missing or
unreachable, when no node holds a worker, or when the nodes do not all hold the same weights: the same seed must give
the same pixels on every GPU, so the bot refuses such a node (engine/ray_pool.py) and the doctor says which.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bot.doctor_checks import FAIL, INFO, OK, Check

if TYPE_CHECKING:
    from bot.config import Config

log = logging.getLogger(__name__)


def ray_checks(cfg: "Config") -> list[Check]:
    """The `ray` lines of the doctor's report."""
    try:
        import ray  # lazy: Ray is an optional extra

        from engine import ray_pool  # lazy: imports Ray
    except ImportError as err:
        return [Check("ray", FAIL, f"Ray is not installed ({err}): pip install -e '.[ray]'")]
    where = cfg.ray.address or "a local instance"
    # 1. The cluster.
    try:
        joined = ray_pool.connect(cfg.ray)
    except Exception as err:  # noqa: BLE001 - unreachable, wrong token, version mismatch: reported as it is
        return [Check("ray", FAIL, f"cannot join the Ray cluster at {where}: {type(err).__name__}: {err}")]
    try:
        return _cluster_checks(cfg, where, ray_pool)
    finally:
        if joined:
            ray.shutdown()


def _cluster_checks(cfg: "Config", where: str, ray_pool) -> list[Check]:
    checks: list[Check] = []
    # 2. Its nodes and the workers they hold.
    nodes = [n for n in ray_pool.read_nodes() if n.alive]
    slots = {n.node_id: cfg.ray.worker_count(n.resources) for n in nodes}
    for n in nodes:
        checks.append(Check("ray", INFO, f"node {n.host}/{n.node_id[:8]}: {n.resources.get('GPU', 0):g} GPU, "
                            f"{slots[n.node_id]} worker(s)"))
    if not any(slots.values()):
        checks.append(Check("ray", FAIL, f"no node of the cluster at {where} has the resources one worker needs "
                            f"({cfg.ray.resources}): start the GPU hosts with `ray start --address …` "
                            f"(docs/scale-out.md)"))
        return checks
    # 3. The model each of them would load, from its own files.
    models = ray_pool.node_models(cfg.engine, cfg.ray)
    why = ray_pool.mismatch(models)
    if why is not None:
        checks.append(Check("ray", FAIL, f"{why}. Put the same weights at the same paths on every GPU host "
                            f"(the same seed must give the same pixels on each)"))
    else:
        checks.append(Check("ray", OK, f"{sum(slots.values())} worker(s) on {len(models)} node(s) of {where}, all "
                            f"with {models[0].model_id}"))
    return checks
