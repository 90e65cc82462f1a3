"""`SeamEngine`: the real engine (tiny model) with fault seams chosen by prompt, for worker and engine-process tests.

A prompt in `explode` raises a plain RuntimeError (a bug in the engine); one in `oom_once` raises EngineOutOfMemory
the first time it comes (as CUDA would on a profile that does not fit), suggesting "streamed"; one in `slow` sleeps
0.3 s after each step (time to kill or cancel it); one in `lost` raises EngineLost every time (the device went away,
as when a Ray actor or its node dies), one in `lost_once` the first time only, and `reconnect` then answers
`comes_back`. By default the prompts "boom", "oom-once", "slow", "lost" and "lost-once" do that.
`seam_loader` builds one: an engine process loads it by name (`SEAM_LOADER`).

`SlowSteps` and `Failing` wrap an engine the tests share (the e2e bots' loaders return them): a pause after every
denoising step, or an engine that refuses every job. `Tunable` is both in one, changed while it runs in a Ray engine
actor (`TUNE` through `RayEngine.call`; tests/support/backends.py). `probe` (`PROBE`, through a `call`) holds an
actor's engine for a while and says on which thread and when it ran (tests/engine/test_ray_pool.py).
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from engine.errors import EngineError, EngineLost, EngineOutOfMemory
from engine.pipeline import Engine
from engine.settings import EngineSettings
from tests.support.file_flag import FileFlag

SEAM_LOADER = f"{__name__}:seam_loader"  # "module:function", as `[engine]` loaders and child processes name one
STEP_SLEEP_S = 0.3
FAILING = "the GPU fell off the bus; the owner was told"  # what `Failing` and a failing `Tunable` say


class SeamEngine(Engine):
    """The real engine with the fault seams above; `batches` records the prompts of each batch it was given."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.reset()

    def reset(self) -> None:
        """The default seams again, no batches recorded."""
        self.explode: set[str] = {"boom"}
        self.oom_once: set[str] = {"oom-once"}
        self.slow: set[str] = {"slow"}
        self.lost: set[str] = {"lost"}
        self.lost_once: set[str] = {"lost-once"}
        self.comes_back = True
        self.reconnects = 0
        self.batches: list[list[str]] = []

    def reconnect(self, should_stop) -> bool:
        """After EngineLost: whether the engine is back (RayEngine.reconnect's contract)."""
        self.reconnects += 1
        return self.comes_back

    def generate_batch(self, specs, *, progress=None, should_cancel=None):
        prompts = [s.prompt for s in specs]
        self.batches.append(prompts)
        for p in prompts:
            if p in self.explode:
                raise RuntimeError(f"seam: {p}")
            if p in self.lost or p in self.lost_once:
                self.lost_once.discard(p)
                raise EngineLost(f"seam: the device running {p!r} went away")
            if p in self.oom_once:
                self.oom_once.discard(p)
                raise EngineOutOfMemory("out of GPU memory (seam); try a leaner profile", profile=self.profile,
                                        suggested_profile="streamed")
        if self.slow.intersection(prompts) and progress is not None:
            progress = _slowed(progress)
        return super().generate_batch(specs, progress=progress, should_cancel=should_cancel)


@contextmanager
def loaded_tiny_engine(models_dir: Path) -> Iterator[Engine]:
    """The tiny model loaded on the CPU (LoRAs from `models_dir`/loras), closed on leaving: a session's shared engine."""
    from tests.support.configs import tiny_engine_settings  # not in engine processes and Ray actors loading this

    engine = Engine.load(tiny_engine_settings(models_dir, loras_dir=str(models_dir / "loras")), "cpu")
    try:
        yield engine
    finally:
        engine.close()


def _slowed(progress):
    def slow_progress(step, total):
        progress(step, total)
        time.sleep(STEP_SLEEP_S)
    return slow_progress


def seam_loader(settings: EngineSettings, device: str) -> SeamEngine:
    """`loader(settings, device)` for WorkerPool / Worker.load, also run inside an engine process."""
    return SeamEngine.load(settings, device)


class SlowSteps:
    """An engine with a pause after each denoising step (so a test can see "step i/N" and press Cancel while a job
    runs); everything else is the wrapped engine's."""

    def __init__(self, engine, step_s: float):
        self._engine, self._step_s = engine, step_s

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def _slow(self, progress):
        def wrapped(step, total):
            time.sleep(self._step_s)
            if progress is not None:
                progress(step, total)
        return wrapped

    def generate(self, spec, *, progress=None, should_cancel=None):
        return self._engine.generate(spec, progress=self._slow(progress), should_cancel=should_cancel)

    def generate_batch(self, specs, *, progress=None, should_cancel=None):
        return self._engine.generate_batch(specs, progress=self._slow(progress), should_cancel=should_cancel)


class Failing(SlowSteps):
    """An engine refusing every job, as a real engine does on a fault it cannot recover from."""

    def generate(self, spec, *, progress=None, should_cancel=None):
        raise EngineError(FAILING)

    def generate_batch(self, specs, *, progress=None, should_cancel=None):
        return [self.generate(s) for s in specs]


class Tunable(SlowSteps):
    """`SlowSteps` and `Failing` in one engine whose behaviour a test changes while the engine runs elsewhere (in a
    Ray engine actor, through `RayEngine.call(TUNE, step_s, failing)`), so that one actor serves every bot of a test
    module as `tiny_engine` serves the local ones. The pause is the actor's own, between its denoising steps."""

    def __init__(self, engine):
        super().__init__(engine, 0.0)
        self.failing = False

    def generate(self, spec, *, progress=None, should_cancel=None):
        if self.failing:
            raise EngineError(FAILING)
        return super().generate(spec, progress=progress, should_cancel=should_cancel)

    def generate_batch(self, specs, *, progress=None, should_cancel=None):
        if self.failing:
            raise EngineError(FAILING)
        return super().generate_batch(specs, progress=progress, should_cancel=should_cancel)


TUNABLE_LOADER = f"{__name__}:tunable_loader"
TUNE = f"{__name__}:tune"


def tunable_loader(settings: EngineSettings, device: str) -> Tunable:
    """`loader(settings, device)` of a `Tunable` over a `SeamEngine` (its prompt seams work too)."""
    return Tunable(SeamEngine.load(settings, device))


def tune(engine: Tunable, step_s: float, failing: bool) -> None:
    """`engine_call(engine, ...)`: the pause after each step and whether every job is refused, from now on."""
    engine._step_s, engine.failing = step_s, failing


PROBE = f"{__name__}:probe"
_probe_thread = threading.local()  # what a thread keeps between requests (as cuDNN keeps its attention plans)


@dataclass(frozen=True)
class ProbeRun:
    """Where and when one `probe` request ran in an engine actor: the thread's native id (Linux thread ids are not
    reused soon, unlike `threading.get_ident`), how many probes that thread ran before it, and its start and end on
    the actor's clock (`time.time()`: the tests' actors run on the test's machine)."""
    thread: int
    earlier: int
    start: float
    end: float


def probe(engine, hold_s: float) -> ProbeRun:
    """`engine_call(engine, hold_s)`: hold the engine `hold_s` seconds and say where and when that ran."""
    start = time.time()
    earlier = getattr(_probe_thread, "runs", 0)
    _probe_thread.runs = earlier + 1
    time.sleep(hold_s)
    return ProbeRun(threading.get_native_id(), earlier, start, time.time())


FAULTS = f"{__name__}:faults"


def faults(engine, op: str, name: str = "", value=None):
    """`engine_call(engine, op, ...)` in an engine actor: "install" an `EngineFaults` (tests/e2e/reliability_kit.py: a
    forward pre-hook on the DiT that raises or runs out of memory at a chosen step) on the actor's engine, "set" or
    "get" one of its fields, "remove" it. `RemoteFaults` (tests/support/backends.py) drives it from the test. "install"
    with `value` a folder: its `paused` and `release` are `FileFlag`s there, which the test reads and sets while the
    pause holds the engine's thread (where a request to the actor would wait behind the paused job)."""
    from tests.e2e.reliability_kit import EngineFaults  # lazy: only an actor of the fault tests needs the e2e kit

    if op == "install":
        seam = EngineFaults() if value is None else EngineFaults(**pause_flags(Path(value)))
        engine.fault_seam = (seam, engine.pipe.transformer.register_forward_pre_hook(seam.before_forward,
                                                                                     with_kwargs=True))
    elif op == "set":
        setattr(engine.fault_seam[0], name, value)
    elif op == "get":
        return getattr(engine.fault_seam[0], name)
    elif op == "remove":
        seam, hook = engine.fault_seam
        seam.release.set()
        hook.remove()
        del engine.fault_seam
    else:
        raise ValueError(f"unknown faults op {op!r}")
    return None


def pause_flags(folder: Path) -> dict[str, FileFlag]:
    """`EngineFaults`' `paused` and `release` as files in `folder`, shared by the test and the engine actor."""
    return {"paused": FileFlag(folder / "paused"), "release": FileFlag(folder / "release")}
