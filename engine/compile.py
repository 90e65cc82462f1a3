"""Regional compilation of the DiT (`[engine] compile`): each repeated block's `forward` goes through
`torch.compile(fullgraph=True)`; everything around the blocks stays eager.

Why the `forward` and not the module (`block.compile()`, what diffusers' `compile_repeated_blocks` does): a
compiled module runs its forward hooks inside the compiled region, and the streamer's hooks (engine/streamer.py:
ring bookkeeping, CUDA events, parameters pointed at ring slots) are Python that dynamo would break the graph on.
Compiling the forward leaves the hooks outside: each block is one graph on every placement plan (resident,
streamed, budgeted), and the weights a hook points at a ring slot are ordinary inputs of that graph. The fp8
Linears need a hook-free forward for the same reason (engine/fp8_compute.py; `apply_precision(hooks=False)`).
All double blocks share one compiled graph and all single blocks another (same code, same shapes); a new image
size or batch compiles once more (`dynamic=False`: each shape gets its own static kernels).

Warm-up: compiling takes tens of seconds per new shape. `engine.warm_up.CompileState` says which shapes are
compiled, so the engine can report "warming up" while a new one compiles. Compiled kernels are cached on disk
(`use_disk_cache`: TORCHINDUCTOR_CACHE_DIR under `[engine] models_dir/.fluxbot-cache/inductor`), so a restart
only traces the blocks again and loads the kernels.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
CACHE_SUBDIR = Path(".fluxbot-cache") / "inductor"
RECOMPILE_LIMIT = 64   # compiled shapes per block forward (sizes x batch sizes); dynamo's default is 8


def compile_wanted(setting: bool, device: str) -> bool:
    """`[engine] compile` on this device: only on CUDA (inductor's CPU kernels take longer to build than the
    tiny CPU model runs)."""
    return bool(setting) and torch.device(device).type == "cuda"


def use_disk_cache(models_dir: str | os.PathLike) -> Path:
    """Point inductor's on-disk cache under `models_dir` unless the owner set TORCHINDUCTOR_CACHE_DIR; the
    directory used. Call before the first compilation (inductor reads the variable when it first needs it)."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen:
        log.info("inductor cache: %s (%s set by the owner)", chosen, CACHE_ENV)
        return Path(chosen)
    path = Path(models_dir).resolve() / CACHE_SUBDIR
    path.mkdir(parents=True, exist_ok=True)
    os.environ[CACHE_ENV] = str(path)
    log.info("inductor cache: %s", path)
    return path


def compile_blocks(blocks: list[nn.Module], *, backend: str = "inductor", mode: str | None = None) -> int:
    """Compile each block's forward in place (hooks stay outside the graph); returns the blocks compiled now.
    Idempotent: a block compiled before is left as it is."""
    import torch._dynamo  # lazy: dynamo's import costs ~1 s; only compiling engines pay it

    # Guard on the hooks inside the blocks (dynamo skips that by default): a LoRA set (engine/lora_apply.py) adds
    # and removes forward hooks on the blocks' Linears, and a graph traced without them must not run with them.
    torch._dynamo.config.skip_nnmodule_hook_guards = False
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit,
                                                          RECOMPILE_LIMIT * 4)
    done = 0
    for block in blocks:
        if "forward" in block.__dict__:      # compiled already (the forward is an instance attribute then)
            continue
        block.forward = torch.compile(block.forward, fullgraph=True, dynamic=False, backend=backend, mode=mode)
        done += 1
    log.info("torch.compile: %d DiT blocks (backend %s, fullgraph, static shapes)", done, backend)
    return done


def uncompile_blocks(blocks: list[nn.Module]) -> None:
    """Back to the eager forward (the class's), and dynamo's compiled code dropped: dynamo caches it on the
    forward's code object, which every block of a kind shares, and a later `compile_blocks` after the blocks'
    Linears changed class (another compute) would otherwise reuse graphs traced with the old forwards — the fast
    bench's in-process fp8 rows once ran bf16's graphs that way (docs/benchmarks.md, run fast2)."""
    import torch._dynamo

    for block in blocks:
        block.__dict__.pop("forward", None)
    torch._dynamo.reset()
