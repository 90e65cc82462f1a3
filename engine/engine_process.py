"""`ProcessEngine`: one device's Engine in its own child process, behind the Engine API.

Why: with one worker per GPU in one Python process, both engine threads share the GIL; PyTorch holds it
while launching kernels, so one GPU's launches stall the other's (two H200s reached 1.61x one, not 2x).
A child process per device gives each engine its own interpreter.

How: `ProcessEngine.start(settings, device, loader=None)` spawns a child (`multiprocessing` "spawn": a fresh
interpreter that inherits no event loop, socket or CUDA state of the bot) whose main loads the engine —
`Engine.load(settings, device)`, or `loader` given as a "module:function" string — and then serves one request
at a time over a Pipe. The parent's blocking calls (`generate`, `generate_batch`, `set_profile`, `call`,
`close`) send a request and wait for its reply, polling every `POLL_S`:
- progress messages from the child become `progress(step, total)` calls in the caller's thread;
- when the caller's `should_cancel()` turns true, the parent writes the request's id into a shared value that
  the child's `should_cancel` reads at its next step boundary (the reply is then a cancelled Result);
- errors come back as the same types with the same message (`EngineError`, `ModelNotFoundError`,
  `EngineOutOfMemory` with `profile` and `suggested_profile`); other exceptions come back as themselves when
  they pickle, else as RuntimeError("Type: message"); the child logs their traceback;
- a child that dies (killed, segfault, host OOM killer) fails the request with an EngineError naming the
  device and exit code; the next generate starts a new child (a load: seconds to minutes).
The child's log records cross back through a second pipe and are handled by the parent's loggers of the same
name.

Costs: a second Python with its own torch (host RAM), a few seconds more start-up, and results cross back
pickled (a 1024x1024 RGB image is ~3 MB).
"""
from __future__ import annotations

import importlib
import logging
import logging.handlers
import multiprocessing
import os
import pickle
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from engine.devices import resolve_devices
from engine.errors import EngineError, EngineOutOfMemory, ModelNotFoundError
from engine.warm_up import CompileState, RemoteEngineFront

if TYPE_CHECKING:
    from engine.settings import EngineSettings
    from engine.spec import CancelFn, JobSpec, ProgressFn, Result

log = logging.getLogger(__name__)

POLL_S = 0.05  # how often a waiting call checks should_cancel() and whether the child still lives
CLOSE_TIMEOUT_S = 30.0  # a child that does not close in this time is terminated
MODES = ("auto", "always", "never")


def wants_process(mode: str, devices: Sequence[str]) -> bool:
    """Whether engines run in child processes: "always", "never", or "auto" = more than one CUDA device."""
    if mode not in MODES:
        raise ValueError(f"[engine] engine_process = {mode!r} is not allowed: use one of {', '.join(MODES)}")
    if mode == "auto":
        return sum(1 for d in devices if str(d).startswith("cuda")) > 1
    return mode == "always"


def import_ref(ref: str) -> Callable:
    """The function named by "package.module:function"."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"loader {ref!r} is not a 'module:function' reference")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def choose_loader(name: str, settings: "EngineSettings", loader: Callable[[Any, str], Any] | str | None = None
                  ) -> Callable[[Any, str], Any]:
    """The function that loads worker `name`'s engine (`loader(settings, device)`): in this process, or in a
    child process when `[engine] engine_process` says so. `loader` defaults to `Engine.load`; a
    "module:function" string names one; a Python object always runs in this process."""
    # 1. A Python object (a test's shared engine, the bench's threads) can only run here.
    if loader is not None and not isinstance(loader, str):
        if settings.engine_process == "always":
            log.warning("worker %s: [engine] engine_process = \"always\", but the loader was given as a Python "
                        "object: the engine runs in this process", name)
        return loader
    # 2. Engine.load or a named loader: in a child process when the setting says so.
    mode = settings.engine_process
    devices = resolve_devices(settings.devices) if mode == "auto" else []
    if wants_process(mode, devices):
        return lambda s, device: ProcessEngine.start(s, device, loader=loader)
    return import_ref(loader) if loader is not None else _engine_load()


def _engine_load() -> Callable[[Any, str], Any]:
    """`Engine.load`, the default loader."""
    from engine.pipeline import Engine  # lazy: engine.pipeline imports torch and diffusers (seconds)

    return Engine.load


# --------------------------------------------------------------------------------------------- errors

@dataclass
class ErrorReply:
    """An exception as it crosses the pipe: enough to raise the same type with the same message."""
    type_name: str
    message: str
    profile: str | None = None
    suggested_profile: str | None = None
    engine_error: bool = False
    pickled: bytes | None = None

    @classmethod
    def of(cls, err: BaseException) -> "ErrorReply":
        reply = cls(type(err).__name__, str(err), getattr(err, "profile", None),
                    getattr(err, "suggested_profile", None), engine_error=isinstance(err, EngineError))
        if not reply.engine_error:
            try:
                reply.pickled = pickle.dumps(err)
            except Exception:
                reply.pickled = None
        return reply

    def rebuild(self) -> Exception:
        if self.type_name == "EngineOutOfMemory":
            return EngineOutOfMemory(self.message, profile=self.profile or "", suggested_profile=self.suggested_profile)
        if self.type_name == "ModelNotFoundError":
            return ModelNotFoundError(self.message)
        if self.engine_error:  # EngineError and any subclass: the message is what the user sees
            return EngineError(self.message)
        if self.pickled is not None:
            try:
                err = pickle.loads(self.pickled)
                if isinstance(err, Exception):
                    return err
            except Exception:
                pass
        return RuntimeError(f"{self.type_name}: {self.message}")


# ------------------------------------------------------------------------------------------- the child

class _PipeSink:
    """What QueueHandler puts records into: the log pipe to the parent (the handler's lock serialises sends)."""

    def __init__(self, conn):
        self.conn = conn

    def put_nowait(self, record: logging.LogRecord) -> None:
        self.conn.send(record)


def _child_main(conn, cancel, log_conn, log_level: int, settings: "EngineSettings", device: str,
                loader_ref: str | None) -> None:
    """The child process: load the engine, then serve requests until "close" or the parent goes away."""
    # 1. Ctrl+C is the parent's to handle (it closes us); logs go to the parent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(_PipeSink(log_conn))]  # tracebacks fold into the text
    root.setLevel(log_level)
    # 2. Load (the same errors as in-process).
    try:
        import torch

        if device.startswith("cuda"):
            from engine.memory import use_expandable_segments  # lazy: the child's torch import comes first

            use_expandable_segments()      # before CUDA starts in this process (set_device starts it)
            torch.cuda.set_device(torch.device(device))
        torch.set_num_threads(_cpu_threads(settings))
        loader = import_ref(loader_ref) if loader_ref else _engine_load()
        engine = loader(settings, device)
    except BaseException as err:  # noqa: BLE001 - every load failure goes back to the parent
        if not isinstance(err, EngineError):
            log.error("engine process for %s: load failed", device, exc_info=True)
        conn.send(("failed", ErrorReply.of(err)))
        return
    conn.send(("ready", {"model_id": getattr(engine, "model_id", ""), "profile": getattr(engine, "profile", ""),
                         "precision": getattr(engine, "precision", ""), "device": getattr(engine, "device", device),
                         "recipe": getattr(engine, "recipe", None),
                         "recipe_computes": getattr(engine, "recipe_computes", ())}))
    # 3. Serve.
    while True:
        try:
            op, rid, args = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            _close_quietly(engine)
            return
        try:
            value = _serve(engine, conn, cancel, op, rid, args)
        except BaseException as err:  # noqa: BLE001 - reported to the parent, the child goes on
            if not isinstance(err, EngineError):
                log.error("engine process for %s: %s failed", device, op, exc_info=True)
            conn.send(("error", ErrorReply.of(err), getattr(engine, "profile", ""), recipe_state(engine)))
        else:
            try:  # pickling happens before anything is written: a value that does not pickle becomes an error
                conn.send(("done", value, getattr(engine, "profile", ""), recipe_state(engine)))
            except (pickle.PicklingError, TypeError, AttributeError) as err:
                log.error("engine process for %s: the reply to %s does not pickle", device, op, exc_info=True)
                conn.send(("error", ErrorReply.of(EngineError(f"the engine's reply to {op} could not be sent "
                                                               f"back ({type(err).__name__}: {err})")), ""))
        if op == "close":
            return


def recipe_state(engine) -> tuple:
    """(recipe, recipe_computes) of an engine, sent with every reply of a child process or a Ray actor: they can change after loading (the
    bf16 working copy, engine/bf16_copy.py, kept or dropped by a re-plan or an out-of-memory error)."""
    return getattr(engine, "recipe", None), tuple(getattr(engine, "recipe_computes", ()))


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cpu_threads(settings: "EngineSettings") -> int:
    """This child's share of the CPU cores for torch's intra-op pool: N engine processes each using every
    core would oversubscribe them (OpenMP threads spin while they wait: two CPU engines ran 2x slower
    together than one alone)."""
    return max(1, usable_cores() // max(1, len(resolve_devices(settings.devices))))


def _serve(engine, conn, cancel, op: str, rid: int, args: tuple) -> Any:
    """Run one request on the engine."""
    if op in ("generate", "generate_batch"):
        def progress(step: int, total: int) -> None:
            conn.send(("progress", step, total))

        def should_cancel() -> bool:
            return cancel.value == rid

        return getattr(engine, op)(args[0], progress=progress, should_cancel=should_cancel)
    if op == "set_profile":
        return engine.set_profile(args[0])
    if op == "call":
        return import_ref(args[0])(engine, *args[1:])
    if op == "close":
        close = getattr(engine, "close", None)
        return close() if close is not None else None
    raise ValueError(f"unknown engine request {op!r}")


def _close_quietly(engine) -> None:
    try:
        close = getattr(engine, "close", None)
        if close is not None:
            close()
    except Exception:
        log.exception("closing the engine failed")


# ------------------------------------------------------------------------------------------ the parent

def _relay_logs(conn) -> None:
    """Parent thread: hand each of a child's log records to this process's logger of the same name, until
    the child's end of the pipe closes."""
    while True:
        try:
            record = conn.recv()
        except (EOFError, OSError):
            return
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


class _Child:
    """One running child: its process, request pipe, cancel value and log pipe. No multiprocessing locks or
    queues: nothing for the resource tracker to find leaked when a child is killed."""

    def __init__(self, settings: "EngineSettings", device: str, loader_ref: str | None):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.cancel = ctx.RawValue("q", 0)  # one writer (the parent), read at step boundaries
        log_reader, log_writer = ctx.Pipe(duplex=False)
        self.log_reader = log_reader
        self.log_thread = threading.Thread(target=_relay_logs, args=(log_reader,), daemon=True,
                                           name=f"fluxbot-engine-logs-{device}")
        self.process = ctx.Process(target=_child_main, name=f"fluxbot-engine-{device}", daemon=True,
                                   args=(child_conn, self.cancel, log_writer,
                                         logging.getLogger().getEffectiveLevel(), settings, device, loader_ref))
        self.process.start()
        child_conn.close()  # only the child holds its ends now: its death reads as EOF here
        log_writer.close()
        self.log_thread.start()

    def alive(self) -> bool:
        return self.process.is_alive()

    def exit_code(self) -> int | None:
        self.process.join(timeout=5)
        return self.process.exitcode

    def dispose(self) -> None:
        """Stop the process (if it still runs), then let the log thread drain the child's last records."""
        if self.process.is_alive():
            self.process.join(timeout=CLOSE_TIMEOUT_S)
        if self.process.is_alive():
            log.warning("the engine process %s did not exit; terminating it", self.process.pid)
            self.process.terminate()
            self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()
        self.log_thread.join(timeout=5)
        self.log_reader.close()


class _ChildDied(Exception):
    pass


class ProcessEngine(RemoteEngineFront):
    """The Engine API, served by a child process. Build it with `ProcessEngine.start(settings, device)`;
    use it from one thread at a time (a lock makes concurrent calls wait)."""

    def __init__(self, settings: "EngineSettings", device: str, loader_ref: str | None = None):
        self.settings = settings
        self.device = device
        self.loader_ref = loader_ref
        self.model_id = ""
        self.profile = ""
        self.precision = ""
        self.recipe = None  # engine.recipe.EngineRecipe of the child's engine
        self.compile_state = CompileState(enabled=False)  # which shapes the child has compiled (from its recipe)
        self.plan = None  # the memory plan lives in the child
        self.restarts = 0
        self._child: _Child | None = None
        self._rid = 0
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def start(cls, settings: "EngineSettings", device: str = "cpu", *, loader: str | None = None) -> "ProcessEngine":
        """Spawn the child and wait until its engine has loaded (blocking). Load errors are raised here as
        they would be in-process (e.g. ModelNotFoundError with the same message)."""
        engine = cls(settings, device, loader)
        with engine._lock:
            engine._spawn()
        return engine

    @property
    def pid(self) -> int | None:
        """The child's process id (None when none runs)."""
        return self._child.process.pid if self._child is not None else None

    # --- Engine API -----------------------------------------------------------------------------------

    def _send_batch(self, specs: list["JobSpec"], progress: "ProgressFn | None",
                    should_cancel: "CancelFn | None") -> list["Result"]:
        return self._request("generate_batch", (specs,), progress, should_cancel)

    def set_profile(self, profile: str) -> None:
        self._request("set_profile", (profile,))

    def call(self, ref: str, *args: Any) -> Any:
        """Run `function(engine, *args)` in the child (ref "module:function"); returns its (picklable) value.
        For tools such as the bench (peak VRAM of the child's device)."""
        return self._request("call", (ref, *args))

    def close(self) -> None:
        """Close the engine and end the child (terminated if it does not end within CLOSE_TIMEOUT_S)."""
        with self._lock:
            self._closed = True
            child, self._child = self._child, None
            if child is None:
                return
            try:
                if child.alive():
                    self._rid += 1
                    child.conn.send(("close", self._rid, ()))
                    deadline = time.monotonic() + CLOSE_TIMEOUT_S
                    while child.alive() and time.monotonic() < deadline:
                        if child.conn.poll(POLL_S):
                            if child.conn.recv()[0] in ("done", "error"):
                                break
            except (EOFError, OSError):
                pass
            finally:
                child.dispose()
        log.info("engine process for %s closed", self.device)

    # --- internals ------------------------------------------------------------------------------------

    def _spawn(self) -> None:
        """Start a child and wait for its "ready" (or its load error). Caller holds the lock."""
        t0 = time.perf_counter()
        child = _Child(self.settings, self.device, self.loader_ref)
        try:
            kind, payload = self._wait_for_load(child)
        except BaseException:
            child.dispose()
            raise
        if kind == "failed":
            child.dispose()
            raise payload.rebuild()
        self._child = child
        self.model_id, self.profile = payload["model_id"], payload["profile"]
        self.precision = payload["precision"]
        self.recipe = payload.get("recipe")
        self.recipe_computes = tuple(payload.get("recipe_computes", ()))   # what a job's stored recipe may switch to
        if self.compile_state.enabled != bool(self.recipe and self.recipe.compile):
            self.compile_state = CompileState(enabled=bool(self.recipe and self.recipe.compile))
        log.info("engine process %s for %s ready in %.1f s (%s, profile %s)", child.process.pid, self.device,
                 time.perf_counter() - t0, self.model_id, self.profile)

    def _wait_for_load(self, child: _Child) -> tuple[str, Any]:
        while True:
            try:
                if child.conn.poll(0.5):
                    kind, payload = child.conn.recv()
                    return kind, payload
            except (EOFError, OSError):
                pass
            if not child.alive() and not child.conn.poll(0):
                raise EngineError(f"the engine process for {self.device} exited with code "
                                  f"{_describe_code(child.exit_code())} while loading the model; the log may say why")

    def _request(self, op: str, args: tuple, progress: "ProgressFn | None" = None,
                 should_cancel: "CancelFn | None" = None) -> Any:
        with self._lock:
            # 1. A child that died during an earlier job is replaced now (a new load).
            if self._closed:
                raise EngineError(f"the engine for {self.device} is closed")
            if self._child is None or not self._child.alive():
                if self._child is not None:
                    self._forget_child()
                log.warning("starting a new engine process for %s", self.device)
                self.restarts += 1
                self._spawn()
            child = self._child
            # 2. Send, then wait for the reply, relaying progress and cancellation.
            self._rid += 1
            rid = self._rid
            try:
                child.conn.send((op, rid, args))
                return self._await_reply(child, rid, progress, should_cancel)
            except (_ChildDied, EOFError, BrokenPipeError, ConnectionResetError):
                code = child.exit_code()
                self._forget_child()
                raise EngineError(f"the engine process for {self.device} exited with code {_describe_code(code)} "
                                  f"during this job (killed, or it crashed: the log may say why); a new one starts "
                                  f"for the next job") from None

    def _await_reply(self, child: _Child, rid: int, progress, should_cancel) -> Any:
        cancel_sent = False
        while True:
            # 1. Cancellation: the child sees it at its next step boundary.
            if should_cancel is not None and not cancel_sent and should_cancel():
                child.cancel.value = rid
                cancel_sent = True
            # 2. A message, or a check that the child still lives.
            if not child.conn.poll(POLL_S):
                if not child.alive() and not child.conn.poll(0):
                    raise _ChildDied()
                continue
            message = child.conn.recv()
            kind = message[0]
            if kind == "progress":
                if progress is not None:
                    progress(message[1], message[2])
            elif kind == "done":
                self._adopt(message)
                return message[1]
            elif kind == "error":
                self._adopt(message)
                raise message[1].rebuild()
            else:
                raise EngineError(f"the engine process for {self.device} sent an unexpected {kind!r} message")

    def _adopt(self, reply: tuple) -> None:
        """The child's profile, and its recipe where the reply carries it, as they are after the request."""
        self.profile = reply[2]
        if len(reply) > 3:
            self.adopt_recipe(*reply[3])

    def _forget_child(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.dispose()


def _describe_code(code: int | None) -> str:
    """"-9 (signal SIGKILL)" for a signal, the number otherwise."""
    if code is None:
        return "unknown (it did not exit in time)"
    if code < 0:
        try:
            return f"{code} (signal {signal.Signals(-code).name})"
        except ValueError:
            return str(code)
    return str(code)

