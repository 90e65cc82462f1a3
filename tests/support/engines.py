"""`SeamEngine`: the real engine (tiny model) with fault seams chosen by prompt, for worker and engine-process tests.

A prompt in `explode` raises a plain RuntimeError (a bug in the engine); one in `oom_once` raises EngineOutOfMemory
the first time it comes (as CUDA would on a profile that does not fit), suggesting "streamed"; one in `slow` sleeps
0.3 s after each step (time to kill or cancel it). By default the prompts "boom", "oom-once" and "slow" do that.
`seam_loader` builds one: an engine process loads it by name (`SEAM_LOADER`).
"""
from __future__ import annotations

import time

from engine.errors import EngineOutOfMemory
from engine.pipeline import Engine
from engine.settings import EngineSettings

SEAM_LOADER = f"{__name__}:seam_loader"  # "module:function", as `[engine]` loaders and child processes name one
STEP_SLEEP_S = 0.3


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
        self.batches: list[list[str]] = []

    def generate_batch(self, specs, *, progress=None, should_cancel=None):
        prompts = [s.prompt for s in specs]
        self.batches.append(prompts)
        for p in prompts:
            if p in self.explode:
                raise RuntimeError(f"seam: {p}")
            if p in self.oom_once:
                self.oom_once.discard(p)
                raise EngineOutOfMemory("out of GPU memory (seam); try a leaner profile", profile=self.profile,
                                        suggested_profile="streamed")
        if self.slow.intersection(prompts) and progress is not None:
            progress = _slowed(progress)
        return super().generate_batch(specs, progress=progress, should_cancel=should_cancel)


def _slowed(progress):
    def slow_progress(step, total):
        progress(step, total)
        time.sleep(STEP_SLEEP_S)
    return slow_progress


def seam_loader(settings: EngineSettings, device: str) -> SeamEngine:
    """`loader(settings, device)` for WorkerPool / Worker.load, also run inside an engine process."""
    return SeamEngine.load(settings, device)
