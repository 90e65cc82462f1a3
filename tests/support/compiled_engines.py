"""An Engine loaded as a GPU loads it with `[engine] compile = true`, on the CPU: hook-free fp8 Linears and each DiT
block's forward compiled at load, with dynamo + AOTAutograd ("aot_eager") instead of inductor (whose C++ build takes
minutes for the tiny model on a CI machine). `compiled_loader` also runs inside an engine process."""
from __future__ import annotations

import functools

import engine.compute_choice as compute_choice
import engine.pipeline as pipeline
from engine.compile import compile_blocks
from engine.settings import EngineSettings

COMPILED_LOADER = "tests.support.compiled_engines:compiled_loader"


def load_compiled(settings: EngineSettings, device: str = "cpu") -> pipeline.Engine:
    """Engine.load with compiling on this device (the seams: which devices compile, and with which backend)."""
    wanted, compile_fn = compute_choice.compile_wanted, pipeline.compile_blocks
    compute_choice.compile_wanted = lambda setting, dev: bool(setting)
    pipeline.compile_blocks = functools.partial(compile_blocks, backend="aot_eager")
    try:
        return pipeline.Engine.load(settings, device)
    finally:
        compute_choice.compile_wanted, pipeline.compile_blocks = wanted, compile_fn


def compiled_loader(settings: EngineSettings, device: str) -> pipeline.Engine:
    """`loader(settings, device)` for ProcessEngine / Worker.load."""
    return load_compiled(settings, device)


COPY_LOADER = "tests.support.compiled_engines:copy_loader"
ROOM_FOR_A_COPY = dict(budget_room=100 * 2**30, device_free=100 * 2**30)


def copy_loader(settings: EngineSettings, device: str) -> pipeline.Engine:
    """`compiled_loader` in a process whose Engine sees the memory figures of a GPU with room for the bf16 working
    copy (engine/bf16_copy.py): the one GPU-only part, the device's memory query, stood in for."""
    pipeline.Engine._vram_room = lambda self: dict(ROOM_FOR_A_COPY)
    return load_compiled(settings, device)
