"""CUDA graphs for the DiT's forward (`[engine] cuda_graphs`): each denoising step replays one recorded graph of
the whole DiT instead of launching its ~1,500 kernels from Python.

Why: with compiled blocks the GPU work of a step is ~0.1 s on an H200, and the CPU side (dynamo's guards, inductor's
launchers, the eager code around the blocks) has to keep ahead of it; every microsecond it falls behind, and the
work between the step's start and its first kernel, is time the GPU idles. A replayed graph launches everything
at once. The kernels are the same ones, in the same order, on the same inputs: the pixels do not change (the
device bench checks bitwise equality: bench/step_probe.py).

How: `GraphedForward` stands in for the DiT module's `forward`. A call whose keyword arguments it has seen fewer
than `capture_after` times runs the module's own forward (the first call of a new shape compiles the blocks; the
next runs them once more warm). Then it records one graph for that signature — the shapes, dtypes and devices of
the tensor arguments and the values of the others — with its own static input buffers and memory pool, and every
later call copies its tensors into those buffers, replays the graph and returns a copy of the output. The
signature includes a `variant` the engine sets (its LoRA set: a LoRA's forward hooks are part of what was recorded,
so a new set records anew), and `clear()` drops every graph (a LoRA switch, a new placement plan).

What cannot be recorded runs as before: a call with positional arguments or an object argument (an IP-adapter's
embeddings in joint_attention_kwargs), a call
that asks for a dict result, and a signature whose recording failed (logged once; that signature stays eager).
Memory: a graph keeps the forward's working memory (its activations) for itself, so the engine only records where
the device keeps room for it and for what runs after the denoise (the VAE decode): `room_for(bytes)` is asked
before each recording, and at most `max_graphs` signatures are kept (the least recently used one is dropped).
Only the resident plan records: the streamer's hooks (engine/streamer.py) copy weights and wait on events on the
host's schedule, which a graph cannot replay.
The device's part — which calls it can record, measuring an eager call's working memory, recording, giving dropped
graphs' memory back — is a `Recorder` (`CudaRecorder` by default), so the bookkeeping above runs in the CPU tests
with a stand-in that "replays" by running the forward again on the static buffers (tests/support/cpu_recorder.py).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

log = logging.getLogger(__name__)

MAX_GRAPHS = 4          # recorded signatures kept (sizes x batch sizes x LoRA sets); each holds its activations


@dataclass
class Recording:
    """What a recorder gives back: `replay()` runs the recorded work again on the same input buffers and writes
    `output` (the same tensor every time)."""
    replay: Callable[[], None]
    output: torch.Tensor
    working_bytes: int                          # device memory the recording holds (a graph's memory pool)


@dataclass
class Recorded:
    """One recorded forward: the buffers its inputs are copied into, and its recording."""
    inputs: dict[str, torch.Tensor]
    recording: Recording

    @property
    def working_bytes(self) -> int:
        return self.recording.working_bytes


class Recorder(Protocol):
    """The device's part of GraphedForward."""

    def device_of(self, kwargs: dict[str, Any]) -> torch.device | None:
        """The device a call with these arguments runs on, or None when it cannot be recorded there."""

    def measured(self, device: torch.device, call: Callable[[], Any]) -> tuple[Any, int]:
        """`call()`'s result and the device working memory it took (bytes)."""

    def record(self, device: torch.device, forward: Callable[[], torch.Tensor]) -> Recording:
        """Record `forward` (which reads its inputs from the static buffers it closes over); raise when it cannot."""

    def release(self) -> None:
        """Give the memory of dropped recordings back to the device."""


class CudaRecorder:
    """Records with `torch.cuda.graph` and measures with the CUDA caching allocator's statistics."""

    def device_of(self, kwargs: dict[str, Any]) -> torch.device | None:
        """The CUDA device of the call's tensors; None when any is elsewhere (a CPU call is never recorded)."""
        devices = {v.device for v in kwargs.values() if isinstance(v, torch.Tensor)}
        if len(devices) != 1:
            return None
        device = devices.pop()
        return device if device.type == "cuda" else None

    def measured(self, device: torch.device, call: Callable[[], Any]) -> tuple[Any, int]:
        """Without resetting the allocator's peak (benches read it): the call's peak above what was allocated
        before it when it set a new peak, else the old peak's height above that (an upper bound)."""
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        out = call()
        torch.cuda.synchronize(device)
        return out, max(0, torch.cuda.max_memory_allocated(device) - base)

    def record(self, device: torch.device, forward: Callable[[], torch.Tensor]) -> Recording:
        """One warm-up call on a side stream, then the recording into a graph with its own memory pool; on a
        failure the device is waited for and the error raised."""
        before = torch.cuda.memory_reserved(device)
        try:
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                forward()
            torch.cuda.current_stream(device).wait_stream(stream)
            torch.cuda.synchronize(device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                output = forward()
        except Exception:
            torch.cuda.synchronize(device)
            raise
        return Recording(replay=graph.replay, output=output,
                         working_bytes=max(0, torch.cuda.memory_reserved(device) - before))

    def release(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@dataclass
class GraphStats:
    """What the graphs did (for the log and the tests): replays, recordings, calls that ran eagerly."""
    replays: int = 0
    recorded: int = 0
    eager: int = 0
    failed: list[str] = field(default_factory=list)


def signature(kwargs: dict[str, Any]) -> tuple | None:
    """The signature a graph is recorded for: tensors by shape, dtype and device; None, numbers, strings and bools
    by value (an empty dict too). None when an argument cannot be recorded (a non-empty dict, a list, any other
    object) or a dict result is asked for."""
    if kwargs.get("return_dict", True):
        return None
    parts = []
    for name in sorted(kwargs):
        value = kwargs[name]
        if isinstance(value, torch.Tensor):
            parts.append((name, tuple(value.shape), value.dtype, value.device))
        elif value is None or isinstance(value, (bool, int, float, str)):
            parts.append((name, value))
        elif isinstance(value, dict) and not value:     # diffusers passes joint_attention_kwargs = {}
            parts.append((name, "{}"))
        else:
            return None
    return tuple(parts)


class GraphedForward:
    """Callable that replaces `module.forward` (see the module docstring). `room_for(bytes, kwargs) -> bool` says
    whether the device may give a new graph for a call with these arguments that much working memory;
    `capture_after`: eager calls of a signature before it is recorded; `recorder`: the device's part (CUDA)."""

    def __init__(self, module: torch.nn.Module, *, room_for: Callable[[int, dict], bool] | None = None,
                 capture_after: int = 2, max_graphs: int = MAX_GRAPHS, recorder: Recorder | None = None):
        self.module = module
        self.recorder = recorder or CudaRecorder()
        self.eager_forward = module.forward
        self.room_for = room_for or (lambda _bytes, _kwargs: True)
        self.capture_after = capture_after
        self.max_graphs = max_graphs
        self.variant: tuple = ()
        self.graphs: OrderedDict[tuple, Recorded] = OrderedDict()
        self.calls: dict[tuple, int] = {}
        self.working: dict[tuple, int] = {}         # a signature's working memory, measured on an eager call
        self.refused: set[tuple] = set()            # signatures that stay eager (recording failed / no room)
        self.stats = GraphStats()

    # ------------------------------------------------------------------------------------------ lifecycle
    def install(self) -> "GraphedForward":
        self.module.forward = self
        return self

    def remove(self) -> None:
        self.clear()
        if self.module.__dict__.get("forward") is self:
            del self.module.__dict__["forward"]

    def set_variant(self, variant: tuple) -> None:
        """What else the recorded work depends on (the engine's LoRA set); a new variant records anew."""
        if variant != self.variant:
            self.clear()
            self.variant = variant

    def clear(self) -> None:
        """Drop every graph (their memory goes back to the allocator) and what was counted."""
        dropped = len(self.graphs)
        self.graphs.clear()
        self.calls.clear()
        self.working.clear()
        self.refused.clear()
        if dropped:
            self.recorder.release()
            log.info("CUDA graphs: %d dropped", dropped)

    # ------------------------------------------------------------------------------------------ calling
    def __call__(self, *args, **kwargs):
        key = signature(kwargs) if not args else None
        if key is not None:
            key = key + (("variant", self.variant),)
        recorded = self.graphs.get(key) if key is not None else None
        if recorded is None and self._recordable(key, kwargs):
            n = self.calls.get(key, 0) + 1
            self.calls[key] = n
            if n > self.capture_after:
                recorded = self._record(key, kwargs)
            else:
                return self._eager_measured(key, args, kwargs)
        if recorded is None:
            self.stats.eager += 1
            return self.eager_forward(*args, **kwargs)
        return self._replay(key, recorded, kwargs)

    def _recordable(self, key: tuple | None, kwargs: dict[str, Any]) -> bool:
        return key is not None and key not in self.refused and self.recorder.device_of(kwargs) is not None

    def _replay(self, key: tuple, recorded: Recorded, kwargs: dict[str, Any]):
        for name, buffer in recorded.inputs.items():
            buffer.copy_(kwargs[name])
        recorded.recording.replay()
        self.graphs.move_to_end(key)
        self.stats.replays += 1
        return (recorded.recording.output.clone(),)

    def _eager_measured(self, key: tuple, args, kwargs):
        """An eager call of a signature not recorded yet, measuring the working memory it takes."""
        device = self.recorder.device_of(kwargs)
        out, working = self.recorder.measured(device, lambda: self.eager_forward(*args, **kwargs))
        self.working[key] = max(self.working.get(key, 0), working)
        self.stats.eager += 1
        return out

    def _record(self, key: tuple, kwargs: dict[str, Any]) -> Recorded | None:
        # 1. Room: the graph keeps the forward's working memory for itself.
        need = self.working.get(key, 0)
        while len(self.graphs) >= self.max_graphs:
            self.graphs.popitem(last=False)
            self.recorder.release()
        if not self.room_for(need, kwargs):
            self.refused.add(key)
            log.info("CUDA graphs: no room for another graph (%.2f GiB of working memory): this shape runs "
                     "without one", need / 2**30)
            return None
        # 2. Static inputs (outside the graph's pool), then the recording (CudaRecorder: a warm-up call on the
        #    recording stream first); any failure leaves this signature eager.
        device = self.recorder.device_of(kwargs)
        inputs = {n: v.clone() for n, v in kwargs.items() if isinstance(v, torch.Tensor)}
        others = {n: v for n, v in kwargs.items() if not isinstance(v, torch.Tensor)}
        try:
            recording = self.recorder.record(device, lambda: self.eager_forward(**inputs, **others)[0])
        except Exception as err:   # an op that cannot be recorded: keep running this shape as before
            self.refused.add(key)
            self.stats.failed.append(f"{type(err).__name__}: {err}"[:300])
            log.warning("CUDA graphs: recording the DiT's forward failed (%s: %s); this shape runs without one",
                        type(err).__name__, str(err)[:300])
            return None
        recorded = Recorded(inputs=inputs, recording=recording)
        self.graphs[key] = recorded
        self.stats.recorded += 1
        log.info("CUDA graphs: recorded the DiT's forward for %s (%.2f GiB)", _describe(kwargs),
                 recorded.working_bytes / 2**30)
        return recorded


def _describe(kwargs: dict[str, Any]) -> str:
    hidden = kwargs.get("hidden_states")
    return f"hidden_states {tuple(hidden.shape)}" if isinstance(hidden, torch.Tensor) else "its arguments"
