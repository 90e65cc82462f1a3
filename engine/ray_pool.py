"""`RayWorkerPool`: the workers of a Ray cluster, one per GPU, following the cluster's membership (`[engine]
backend = "ray"`).

The bot stays the single driver: the FIFO, fairness, limits, cancel and recovery are the ones of local workers
(engine/queue.py, engine/worker.py); only a worker's engine is different: a `RayEngine` (engine/ray_engine.py), an
actor pinned to one node holding one GPU (`[ray] resources`). Interface as `WorkerPool` (engine/pool.py): `start()
-> PoolState`, `stop(close_engines=)`, `workers`, `state`, `on_change(PoolState)`.

Membership, read from `ray.nodes()` (each node's total resources) every `[ray] poll_s`:
1. Each alive node holds `RaySettings.worker_count(resources)` *slots* (node, index); a new slot gets an actor and a
   worker as soon as its engine loads, without a restart. Nodes load in parallel (each from its own disk), the
   slots of one node one after the other (loading is RAM-heavy).
2. A worker whose actor died mid-job re-queues the job at the head of its owner's turn (`EngineLost`); Ray restarts
   the actor on its node (the model reloads) and the worker goes on; when the node is gone, the worker ends and the
   pool drops it. A job is never lost (it is re-queued) and never delivered twice (Ray never retries it by itself).
3. Every engine must have the same `model_id` (name@sha256 of the weights): the bot's own copy of the model sets it
   when its host has one (read before any actor starts, so which node loads first does not matter), else the first
   engine that loads; a node whose files differ is refused (it would break "same seed, same pixels"), reported as
   a `DeviceFailure`.
   A slot whose engine failed to load is not tried again while its node stays; a node that leaves and joins again
   (a new node id) is.
"""
from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from engine.errors import EngineError
from engine.pool import DeviceFailure, PoolState
from engine.queue import JobQueue
from engine.ray_engine import RayEngine
from engine.ray_settings import RaySettings, address_problem
from engine.worker import Worker, WorkerHooks

if TYPE_CHECKING:
    from engine.settings import EngineSettings

log = logging.getLogger(__name__)


class ModelMismatch(EngineError):
    """A node's weights differ from the ones the other workers serve."""


@dataclass(frozen=True)
class NodeView:
    """One node of the cluster as `ray.nodes()` describes it."""
    node_id: str
    host: str
    alive: bool
    resources: dict = field(default_factory=dict)  # total, not free: our own actors use some


@dataclass(frozen=True)
class Slot:
    """Room for one worker: the `index`-th one of a node."""
    node_id: str
    host: str
    index: int

    @property
    def name(self) -> str:
        return f"ray:{self.host}/{self.node_id[:8]}#{self.index}"


def connect(settings: RaySettings, **init_kwargs: Any) -> bool:
    """Join the cluster of `[ray] address`, or start a local instance when it is empty. Nothing when Ray is already
    initialised in this process (a test's cluster). True when this call connected (the pool disconnects at stop).
    A Ray Client address is refused (EngineError), as when the config is read."""
    if why := address_problem(settings.address):
        raise EngineError(f"[ray] address = {settings.address!r} {why}")
    if ray.is_initialized():
        return False
    if settings.address:
        ray.init(address=settings.address, namespace=settings.namespace, **init_kwargs)
        log.info("connected to the Ray cluster at %s (namespace %s)", settings.address, settings.namespace)
    else:
        gpus = None if settings.local_gpus < 0 else settings.local_gpus
        ray.init(address="local", namespace=settings.namespace, num_gpus=gpus, include_dashboard=False, **init_kwargs)
        log.info("started a local Ray instance (%s GPU)", ray.cluster_resources().get("GPU", 0))
    return True


def read_nodes() -> list[NodeView]:
    """The cluster's nodes (blocking: one request to Ray's control service)."""
    return [NodeView(n["NodeID"], n.get("NodeManagerAddress", ""), bool(n.get("Alive")), dict(n.get("Resources") or {}))
            for n in ray.nodes()]


def wanted_slots(nodes: list[NodeView], settings: RaySettings) -> list[Slot]:
    """The slots of the alive nodes, node by node."""
    return [Slot(n.node_id, n.host, i) for n in nodes if n.alive for i in range(settings.worker_count(n.resources))]


@dataclass
class RayWorkerPool:
    """Starts a worker for every slot of the cluster and drops those whose node left. `loader` is a
    "module:function" run in each actor instead of `Engine.load` (tests' seam engines), or a Python function
    `loader(settings, node_id) -> engine` run on the driver instead of starting an actor (the e2e tests hand every
    bot of a module one engine actor they started, as local tests share one engine: tests/support/backends.py)."""
    settings: "EngineSettings"
    ray_settings: RaySettings
    queue: JobQueue
    hooks: WorkerHooks
    loader: str | Callable[[Any, str], Any] | None = None
    on_change: Callable[[PoolState], None] | None = None
    state: PoolState = field(default_factory=PoolState)
    model_id: str | None = None  # what every engine serves (the bot's own files, else the first engine that loads)
    local_reference: bool | None = None  # read the bot's own copy first (None: when `loader` is None, real engines)
    _model_from: str = "the other workers serve"  # where model_id came from, in the refusal's words
    _slots: dict[Slot, Worker] = field(default_factory=dict)
    _loading: dict[str, asyncio.Task] = field(default_factory=dict)  # node id -> the task loading its slots
    _failed: dict[Slot, DeviceFailure] = field(default_factory=dict)
    _pending: list[Slot] = field(default_factory=list)  # slots still to load
    _watch: asyncio.Task | None = None
    _dropping: set[asyncio.Task] = field(default_factory=set)  # departed workers being stopped
    _stopping: bool = False
    _connected_here: bool = False

    @property
    def workers(self) -> list[Worker]:
        return list(self.state.workers)

    async def start(self) -> PoolState:
        """Connect to Ray, start a worker for every slot the cluster has now (returns once they loaded or failed),
        then keep watching the membership in the background."""
        # 1. The cluster.
        self._connected_here = await asyncio.to_thread(connect, self.ray_settings)
        # 2. The weights every node must serve: the bot's own copy, when its host has one (real engines; a loader
        #    seam serves what it likes unless the test asks).
        local = self.loader is None if self.local_reference is None else self.local_reference
        if local and self.model_id is None:
            await self._reference_model()
        # 3. Its slots now.
        await self.refresh()
        if self._loading:
            await asyncio.gather(*self._loading.values(), return_exceptions=True)
        if not self.state.workers:
            log.error("no engine loaded on the Ray cluster (%s)", self.ray_settings.address or "local instance")
        # 4. Later changes.
        self._watch = asyncio.create_task(self._watch_loop(), name="fluxbot-ray-membership")
        return self.state

    async def refresh(self) -> None:
        """One look at the membership: load the new slots (in the background), forget the failures of nodes that
        left. Workers of departed nodes end by themselves (their engine is lost for good)."""
        nodes = await asyncio.to_thread(read_nodes)
        wanted = wanted_slots(nodes, self.ray_settings)
        alive = {s.node_id for s in wanted}
        # 1. A node that left may come back as a new node: its failures are forgotten.
        gone = [s for s in self._failed if s.node_id not in alive]
        for slot in gone:
            del self._failed[slot]
        # 2. New slots, grouped by node; a node already loading is looked at again next time.
        new: dict[str, list[Slot]] = defaultdict(list)
        for slot in wanted:
            if slot not in self._slots and slot not in self._failed and slot.node_id not in self._loading:
                new[slot.node_id].append(slot)
        for node_id, slots in new.items():
            self._pending.extend(slots)
            self._loading[node_id] = asyncio.create_task(self._load_node(node_id, slots),
                                                         name=f"fluxbot-ray-load-{node_id[:8]}")
        if new or gone:
            self._change()

    async def stop(self, *, close_engines: bool = True) -> None:
        """Stop watching, stop every worker (running jobs get no outcome: restart recovery reruns them), remove the
        actors unless told not to, and leave Ray if the pool joined it."""
        self._stopping = True
        for task in [self._watch, *self._loading.values()]:
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for worker in self.state.workers:
            try:
                await worker.stop(close_engine=close_engines)
            except Exception:
                log.exception("stopping worker %s failed", worker.name)
        if self._connected_here:
            await asyncio.to_thread(ray.shutdown)

    # --- inside ----------------------------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.ray_settings.poll_s)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # Ray's control service unreachable for a moment: look again later
                log.warning("reading the Ray cluster's membership failed; trying again in %.0f s",
                            self.ray_settings.poll_s, exc_info=True)

    async def _load_node(self, node_id: str, slots: list[Slot]) -> None:
        """Load a node's new slots one after the other."""
        try:
            for slot in slots:
                await self._load_slot(slot)
        finally:
            self._loading.pop(node_id, None)
            self._pending[:] = [s for s in self._pending if s not in slots]
            self._change()

    async def _load_slot(self, slot: Slot) -> None:
        """Start the slot's actor, check its model, start its worker; a failure is reported and kept."""
        def load(settings: "EngineSettings", node_id: str) -> RayEngine:
            if callable(self.loader):
                return self.loader(settings, node_id)
            return RayEngine.start(settings, node_id, self.ray_settings.resources, name=slot.name, loader=self.loader)

        try:
            worker = await Worker.load(slot.name, self.settings, slot.node_id, self.queue, self.hooks, loader=load)
            await self._check_model(worker)
        except Exception as err:  # noqa: BLE001 - this slot's failure, reported below
            self._pending.remove(slot)
            log.error("the engine could not start on %s: %s", slot.name, err)
            self._failed[slot] = DeviceFailure(slot.node_id, slot.name, err)
            self._change()
            return
        self._pending.remove(slot)
        self._slots[slot] = worker
        self.queue.set_workers(len(self._slots))
        worker.start().add_done_callback(lambda _task, s=slot, w=worker: self._ended(s, w))
        log.info("worker %s joined (%d worker(s) on the cluster)", slot.name, len(self._slots))
        self._change()

    async def _reference_model(self) -> None:
        """Read the model the bot's own files give (hashed once, cached beside them), the one every node must
        serve; without a copy on this host, the first engine that loads sets it."""
        model_id, why = await asyncio.to_thread(_node_model_id, self.settings)
        if model_id:
            self.model_id, self._model_from = model_id, "the bot's own files give"
            log.info("every Ray node must serve %s (the bot's own copy of the model)", model_id)
        else:
            log.info("the bot's host has no copy of the model (%s): the first engine that loads on the cluster sets "
                     "the weights every node must serve", why)

    async def _check_model(self, worker: Worker) -> None:
        """Every engine serves the same weights; a different one is closed and refused."""
        model_id = worker.engine.model_id
        if self.model_id is None:
            self.model_id = model_id
        if model_id == self.model_id:
            return
        await worker.stop(close_engine=True)
        raise ModelMismatch(f"{worker.name} loaded {model_id}, but {self._model_from} {self.model_id}: put the "
                            f"same weights on every host (the same seed must give the same pixels everywhere)")

    def _ended(self, slot: Slot, worker: Worker) -> None:
        """A worker's loop ended: its engine is gone for good (its node left). Drop it."""
        if self._stopping or self._slots.get(slot) is not worker:
            return
        del self._slots[slot]
        self.queue.set_workers(len(self._slots))
        log.warning("worker %s left (%d worker(s) on the cluster)", slot.name, len(self._slots))
        task = asyncio.create_task(worker.stop(close_engine=True), name=f"fluxbot-ray-drop-{slot.name}")
        self._dropping.add(task)
        task.add_done_callback(self._dropping.discard)
        self._change()

    def _change(self) -> None:
        """Recompute the state and tell the owner; a failing callback is logged, the pool goes on."""
        pending = tuple(s.name for s in self._pending)
        self.state = replace(self.state, workers=tuple(self._slots.values()), failed=tuple(self._failed.values()),
                             pending=pending)
        if self.on_change is None:
            return
        try:
            self.on_change(self.state)
        except Exception:
            log.exception("the Ray worker pool's on_change callback failed")



# ------------------------------------------------------------------------------------ doctor --ray

@dataclass(frozen=True)
class NodeModel:
    """The model a node would load, by its files: `model_id`, or why it cannot (`error`)."""
    node_id: str
    host: str
    model_id: str = ""
    error: str = ""


def _node_model_id(settings: "EngineSettings") -> tuple[str, str]:
    """On a node: (model_id, "") from its own files, or ("", why not)."""
    from engine.models import model_id, resolve_source  # lazy: runs on the node, where its files are

    try:
        return model_id(resolve_source(settings)), ""
    except Exception as err:  # noqa: BLE001 - reported per node
        return "", f"{type(err).__name__}: {err}"


def node_models(settings: "EngineSettings", ray_settings: RaySettings) -> list[NodeModel]:
    """For every alive node that holds workers: the model its own files give (blocking: hashes the weights on
    each node, cached beside them). `doctor --ray` refuses a cluster whose nodes disagree (`mismatch`)."""
    remote = ray.remote(num_cpus=0)(_node_model_id)
    nodes = [n for n in read_nodes() if n.alive and ray_settings.worker_count(n.resources) > 0]
    refs = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)).remote(settings)
            for n in nodes]
    return [NodeModel(n.node_id, n.host, *ray.get(ref)) for n, ref in zip(nodes, refs)]


def mismatch(models: list[NodeModel]) -> str | None:
    """Why these nodes cannot serve together (a node without the model, or two models), or None."""
    missing = [m for m in models if m.error]
    if missing:
        return "; ".join(f"{m.host}/{m.node_id[:8]}: {m.error}" for m in missing)
    ids = sorted({m.model_id for m in models})
    if len(ids) > 1:
        by_id = {i: [f"{m.host}/{m.node_id[:8]}" for m in models if m.model_id == i] for i in ids}
        return "the nodes hold different weights: " + "; ".join(f"{i} on {', '.join(h)}" for i, h in by_id.items())
    return None
