"""`RayEngine`: one GPU's Engine in a Ray actor (`EngineActor`) on some node of a Ray cluster, behind the Engine API.

The actor (runs in a Ray worker process on the node it is pinned to, holding one GPU: Ray's CUDA_VISIBLE_DEVICES
makes it "cuda" there; a node that advertises a logical GPU without having one, as in the tests, runs on the CPU):
- its constructor loads the engine from that node's own files (`[engine] model`, `models_dir`: the same paths on
  every host) with `Engine.load` or a "module:function" loader; a load error is kept and reported by `info()`
  (a constructor that raised would be restarted by Ray in a loop);
- `run(rid, op, payload)` is a streaming generator: `("progress", step, total)` per denoising step, then
  `("done", value)` or `("error", ErrorReply)`; requests run one after another on the actor's one engine thread
  (made once, as a child process serves on its main thread: cuDNN keeps its attention plans per thread, and a
  fresh thread per job rebuilt them, ~0.1 s of every H200 job), whose progress callback feeds the generator;
  results (PIL images in `Result`s) come back through Ray's object store;
- torch's CPU threads, on a GPU: the CPUs the node advertises to Ray shared by its GPUs, the share a local child
  process gets (Ray would leave an actor of `num_cpus=0` one thread); an actor computing on the CPU (a logical GPU,
  as in the tests' simulated nodes sharing one machine) keeps Ray's one thread;
- `cancel(rid)` runs in its own concurrency group, beside a running job: the job's `should_cancel` reads the flag
  at its next step boundary (a cancelled job returns `Result(cancelled=True)`, as in-process).
- `max_restarts=-1`: a dead actor process is restarted by Ray on the same node (hard node affinity), re-running
  the constructor (the model reloads); `max_task_retries=0`: Ray never re-runs a job by itself, so a job whose actor
  died is re-queued by the worker (engine/worker.py, `EngineLost`) and never runs twice at once. When the node is
  gone, the actor cannot be scheduled again and every call fails: the worker ends.

The driver side, `RayEngine`, is what a `Worker` holds: blocking calls made from the worker's thread (like
`ProcessEngine`), polling every `POLL_S` for the next streamed item and for the caller's `should_cancel()`.
Errors the engine raised come back as the same types with the same message (`ErrorReply`); Ray's own failures
(actor died or unreachable, node gone) become `EngineLost`.
"""
from __future__ import annotations

import logging
import os
import queue
import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from engine.engine_process import ErrorReply, import_ref, recipe_state, usable_cores
from engine.errors import EngineError, EngineLost
from engine.warm_up import CompileState, RemoteEngineFront

if TYPE_CHECKING:
    from engine.settings import EngineSettings
    from engine.spec import CancelFn, JobSpec, ProgressFn, Result

log = logging.getLogger(__name__)

POLL_S = 0.05  # how often a waiting call checks should_cancel() and the stream
RECONNECT_POLL_S = 0.5  # how often `reconnect` checks whether it should stop waiting for a restarting actor
GPU = "GPU"


@dataclass(frozen=True)
class ActorInfo:
    """What an actor says about itself once its engine loaded (or failed to)."""
    node_id: str
    host: str
    pid: int
    device: str
    model_id: str = ""
    profile: str = ""
    precision: str = ""
    recipe: Any = None
    recipe_computes: tuple = ()   # Engine.recipe_computes: what a job's stored recipe may switch to
    error: ErrorReply | None = None  # the load failed: no engine


# ------------------------------------------------------------------------------------------ the actor

@ray.remote(concurrency_groups={"control": 2})
class EngineActor:
    """One engine on one GPU of the node this actor is pinned to (see the module's doc)."""

    def __init__(self, settings: "EngineSettings", loader_ref: str | None = None):
        self._cancels: dict[int, threading.Event] = {}
        self._requests: queue.Queue = queue.Queue()
        self.engine = None
        self.device = _actor_device()
        self.error: ErrorReply | None = None
        if self.device != "cpu":
            _share_cpu_threads()
        threading.Thread(target=self._engine_loop, name="fluxbot-actor-engine", daemon=True).start()
        try:
            self.engine = _load(settings, self.device, loader_ref)
        except BaseException as err:  # noqa: BLE001 - reported by info(); the driver raises it
            if not isinstance(err, EngineError):
                log.error("engine actor on %s: load failed", socket.gethostname(), exc_info=True)
            self.error = ErrorReply.of(err)

    @ray.method(concurrency_group="control")
    def info(self) -> ActorInfo:
        e = self.engine
        return ActorInfo(node_id=ray.get_runtime_context().get_node_id(), host=socket.gethostname(), pid=os.getpid(),
                         device=self.device, model_id=getattr(e, "model_id", ""), profile=getattr(e, "profile", ""),
                         precision=getattr(e, "precision", ""), recipe=getattr(e, "recipe", None),
                         recipe_computes=tuple(getattr(e, "recipe_computes", ())), error=self.error)

    @ray.method(concurrency_group="control")
    def cancel(self, rid: int) -> bool:
        """Ask request `rid` to stop at its next step; False when it is not running."""
        flag = self._cancels.get(rid)
        if flag is not None:
            flag.set()
        return flag is not None

    def run(self, rid: int, op: str, payload: Any) -> Iterator[tuple]:
        """Streaming generator of one request (generate, generate_batch, set_profile, call, close)."""
        events: queue.Queue = queue.Queue()
        cancel = self._cancels[rid] = threading.Event()
        self._requests.put((op, payload, events, cancel))
        try:
            while True:
                item = events.get()
                yield item
                if item[0] != "progress":
                    return
        finally:
            self._cancels.pop(rid, None)

    def _engine_loop(self) -> None:
        """The engine thread: every request, in the order they came (a request whose driver went away still
        ends before the next one starts: one job at a time on the GPU)."""
        while True:
            op, payload, events, cancel = self._requests.get()
            try:
                value = self._serve(op, payload, events, cancel)
                events.put(("done", value, recipe_state(self.engine)))
            except BaseException as err:  # noqa: BLE001 - goes back to the driver
                if not isinstance(err, EngineError):
                    log.error("engine actor: %s failed", op, exc_info=True)
                events.put(("error", ErrorReply.of(err), recipe_state(self.engine)))

    def _serve(self, op: str, payload: Any, events: queue.Queue, cancel: threading.Event) -> Any:
        if self.engine is None:
            raise self.error.rebuild() if self.error else EngineError("the engine did not load")
        if op in ("generate", "generate_batch"):
            return getattr(self.engine, op)(payload, progress=lambda s, t: events.put(("progress", s, t)),
                                            should_cancel=cancel.is_set)
        if op == "set_profile":
            return self.engine.set_profile(payload)
        if op == "call":
            ref, *args = payload
            return import_ref(ref)(self.engine, *args)
        if op == "close":
            close, self.engine = getattr(self.engine, "close", None), None
            return close() if close is not None else None
        raise ValueError(f"unknown engine request {op!r}")


def _actor_device() -> str:
    """The actor's device: its GPU when Ray gave it a real one, else the CPU (a logical GPU in the tests)."""
    import torch

    if ray.get_gpu_ids() and torch.cuda.is_available():
        from engine.memory import use_expandable_segments  # lazy: imports torch; before CUDA starts

        use_expandable_segments()
        return "cuda"
    return "cpu"


def _share_cpu_threads() -> None:
    """torch's intra-op threads: the CPUs this node advertises to Ray (all its cores unless `ray start --num-cpus`
    says otherwise) divided among its GPUs, at least one — the share a local engine process gets
    (engine/engine_process.py). Ray would leave an actor that reserves no CPU one thread (OMP_NUM_THREADS=1)."""
    import torch

    node = ray.get_runtime_context().get_node_id()
    res = next((n.get("Resources", {}) for n in ray.nodes() if n.get("NodeID") == node), {})
    cores = usable_cores()
    cpus = min(cores, int(res.get("CPU", cores)))
    torch.set_num_threads(max(1, cpus // max(1, int(res.get(GPU, 0)))))


def _load(settings: "EngineSettings", device: str, loader_ref: str | None):
    if loader_ref:
        return import_ref(loader_ref)(settings, device)
    from engine.pipeline import Engine  # lazy: imports torch and diffusers (seconds)

    return Engine.load(settings, device)


# ---------------------------------------------------------------------------------------- the driver

class RayEngine(RemoteEngineFront):
    """The Engine API of one `EngineActor`. Build it with `RayEngine.start(settings, node_id, resources)`; use it
    from one thread at a time (a worker's engine thread)."""

    def __init__(self, actor, info: ActorInfo, name: str):
        self.actor = actor
        self.name = name
        self.restarts = 0
        self.plan = None  # the memory plan lives in the actor
        self.compile_state = CompileState(enabled=False)  # which shapes the actor has compiled (from its recipe)
        self._rid = 0
        self._closed = False
        self._apply(info)

    @classmethod
    def start(cls, settings: "EngineSettings", node_id: str, resources: dict[str, float], *, name: str = "",
              loader: str | None = None) -> "RayEngine":
        """Create the actor on node `node_id` with `resources` (e.g. {"GPU": 1}) and wait until its engine loaded
        (blocking: minutes for a real model). Load errors are raised here as in-process (ModelNotFoundError with
        the same message); the actor is then removed."""
        custom = {k: float(v) for k, v in resources.items() if k not in (GPU, "CPU")}
        actor = EngineActor.options(
            num_gpus=float(resources.get(GPU, 0)), num_cpus=float(resources.get("CPU", 0)), resources=custom or None,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            max_restarts=-1, max_task_retries=0, name=None,
        ).remote(settings, loader)
        try:
            info = ray.get(actor.info.remote())
        except RayError as err:
            _kill(actor)
            raise EngineLost(f"the engine actor {name or node_id} could not start: {_ray_reason(err)}") from None
        if info.error is not None:
            _kill(actor)
            raise info.error.rebuild()
        log.info("engine actor %s ready on %s (pid %d, %s, %s, profile %s)", name, info.host, info.pid, info.device,
                 info.model_id, info.profile)
        return cls(actor, info, name or node_id)

    # --- Engine API -----------------------------------------------------------------------------------

    def _send_batch(self, specs: list["JobSpec"], progress: "ProgressFn | None",
                    should_cancel: "CancelFn | None") -> list["Result"]:
        return self._request("generate_batch", specs, progress, should_cancel)

    def set_profile(self, profile: str) -> None:
        self._request("set_profile", profile)
        self.profile = profile

    def call(self, ref: str, *args: Any) -> Any:
        """Run `function(engine, *args)` in the actor (ref "module:function"), as `ProcessEngine.call`."""
        return self._request("call", (ref, *args))

    def close(self) -> None:
        """Close the engine and remove the actor (Ray does not restart it)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._request("close", None, closing=True)
        except EngineError:
            pass
        _kill(self.actor)
        log.info("engine actor %s closed", self.name)

    def reconnect(self, should_stop: Callable[[], bool]) -> bool:
        """After `EngineLost`: wait until Ray restarted the actor on its node and its engine reloaded (True), or
        until it cannot come back (its node left; the reload failed) or `should_stop()` (False)."""
        while not should_stop() and not self._closed:
            ref = self.actor.info.remote()
            ready: list = []
            while not ready and not should_stop():
                ready, _ = ray.wait([ref], timeout=RECONNECT_POLL_S)
            if not ready:
                return False
            try:
                info = ray.get(ref)
            except ray.exceptions.ActorUnavailableError:  # restarting: ask again
                continue
            except RayError as err:
                log.warning("engine actor %s cannot come back: %s", self.name, _ray_reason(err))
                return False
            if info.error is not None:
                log.error("engine actor %s restarted but its engine did not load: %s", self.name, info.error.message)
                _kill(self.actor)
                return False
            self.restarts += 1
            self._apply(info)
            return True
        return False

    # --- internals ------------------------------------------------------------------------------------

    def _apply(self, info: ActorInfo) -> None:
        self.info = info
        self.node_id, self.host, self.pid = info.node_id, info.host, info.pid
        self.device = info.device
        self.model_id, self.profile, self.precision = info.model_id, info.profile, info.precision
        self.recipe = info.recipe
        self.recipe_computes = info.recipe_computes
        # A (re)loaded actor has compiled nothing yet.
        self.compile_state = CompileState(enabled=bool(info.recipe and getattr(info.recipe, "compile", False)))

    def _request(self, op: str, payload: Any, progress: "ProgressFn | None" = None,
                 should_cancel: "CancelFn | None" = None, *, closing: bool = False) -> Any:
        if self._closed and not closing:
            raise EngineError(f"the engine {self.name} is closed")
        self._rid += 1
        rid = self._rid
        try:
            stream = self.actor.run.options(num_returns="streaming").remote(rid, op, payload)
            return self._follow(stream, rid, progress, should_cancel)
        except RayError as err:
            raise EngineLost(f"the engine actor {self.name} went away ({_ray_reason(err)})") from None

    def _follow(self, stream, rid: int, progress, should_cancel) -> Any:
        """Relay the stream's progress and the caller's cancel until the request's reply."""
        cancel_sent = False
        while True:
            # 1. Cancellation: the actor's job sees it at its next step boundary.
            if should_cancel is not None and not cancel_sent and should_cancel():
                self.actor.cancel.remote(rid)
                cancel_sent = True
            # 2. The next streamed item (Ray raises here when the actor or its node died).
            ready, _ = ray.wait([stream], timeout=POLL_S)
            if not ready:
                continue
            try:
                kind, *rest = ray.get(next(stream))
            except StopIteration:
                raise EngineError(f"the engine actor {self.name} ended request {rid} without a reply") from None
            if kind == "progress":
                if progress is not None:
                    progress(*rest)
            elif kind == "done":
                if len(rest) > 1:
                    self.adopt_recipe(*rest[1])
                return rest[0]
            elif kind == "error":
                if len(rest) > 1:
                    self.adopt_recipe(*rest[1])
                raise rest[0].rebuild()
            else:
                raise EngineError(f"the engine actor {self.name} sent an unexpected {kind!r} message")


def _kill(actor) -> None:
    """Remove an actor for good (no restart); an actor already gone is fine."""
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already dead or the cluster is gone
        pass


def _ray_reason(err: BaseException) -> str:
    """Ray's exception in one line (its messages run to paragraphs)."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first[:200]}" if first else type(err).__name__
