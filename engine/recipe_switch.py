"""One job made with the engine recipe it asks for (`JobSpec.recipe`: a stored job's, when /show makes a pruned
image again), as far as the engine can match it; the engine's own recipe again after the job.

What can switch for one job, and how (engine/recipe.py's `reached` is the rule, in plain data):
- compute: the DiT's fp8-stored Linears with a hook-free forward change class in place (as engine/fp8_compute.py's
  `swap_linears` does at load): "bf16" runs `UpcastLinear` (bit-identical to diffusers' casting hooks), "fp8" or
  "fp8.<kernel>" runs `Fp8Linear` of that kernel, where the device computes fp8 at all (`resolve_compute`: sm_89+
  GPUs, and the CPU, which runs `_scaled_mm` exactly) and runs that kernel as itself (`kernel_for` gives it back,
  not its fallback). An engine whose Linears run diffusers' casting hooks (the eager bf16 engine) or whose DiT is
  stored in bf16 (`fp8 = "off"`) switches nothing. Dynamo guards on the Linears' classes: compiled blocks compile
  once more for the switched classes (a warm-up: the job's `recipe_variant` is part of the compiled shape's key).
- compile: a job made with eager blocks runs the blocks' class (eager) forward on a compiled engine: each block's
  compiled forward, an instance attribute (engine/compile.py), is set aside for the job and put back after; dynamo's
  caches stay as they are. A compiled recipe cannot be matched by an eager engine.
- the bf16 working copy (engine/bf16_copy.py): an engine holding one computes "bf16.copy"; a job asking for "bf16"
  runs `UpcastLinear` (the per-step upcast) and the copy's class comes back after; "bf16.copy" is reachable only
  while the copy is held.
- fp8 storage, torch, diffusers and the device stay the engine's: those differences remain, and `/show` names them.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from torch import nn

from engine.fp8_compute import (FP8_KERNELS, Fp8Linear, UpcastLinear, kernel_for, resolve_compute,
                                swap_linears)
from engine.bf16_copy import CopiedUpcastLinear
from engine.recipe import BF16_COPY, KERNEL_SEP, UNNAMED_FP8_KERNEL, EngineRecipe, compute_name, reached
from engine.streamer_flux import dit_blocks

log = logging.getLogger(__name__)


def reachable_computes(pipe, device: str, known: dict[str, str] | None = None) -> tuple[str, ...]:
    """The recipe computes this pipeline's DiT can switch to for one job on `device` (see the module's doc): none
    without hook-free fp8-stored Linears; else "bf16" and each fp8 kernel the device runs as itself. `known`: kernel
    -> `kernel_for(device, kernel)` already found (the engine's own kernel), so a Triton self-check runs once."""
    if not _switchable_linears(pipe):
        return ()
    if not _computes_fp8(device):
        return ("bf16",)
    ran = {k: (known or {}).get(k) or kernel_for(device, k) for k in FP8_KERNELS}
    return ("bf16",) + tuple(compute_name("fp8", k) for k in FP8_KERNELS if ran[k] == k)


@contextmanager
def made_with(pipe, running: EngineRecipe, stored: dict[str, Any] | None,
              computes: tuple[str, ...]) -> Iterator[EngineRecipe]:
    """Within the block the DiT runs the part of `stored` (a job's recipe; None: the engine's own) the engine can
    match (`computes`: `reachable_computes`); yields the recipe it runs, which the job's Result records. Everything
    switched is put back on leaving, whatever happened inside."""
    used = reached(running, EngineRecipe.from_dict(stored), computes)
    undo: list[Callable[[], None]] = []
    try:
        # 1. The Linears' compute, then 2. eager blocks; each step registers its undo as soon as it is done.
        if used.compute != running.compute:
            if used.compile:
                undo.append(forget_compiled_code)      # on the way out, after the classes are back: compile afresh
            undo.append(_switch_compute(_switchable_linears(pipe), used.compute))
            if used.compile:
                forget_compiled_code()
        if used.compile != running.compile:
            undo.append(_eager_blocks(dit_blocks(pipe)))
        if undo:
            log.info("job made with its stored recipe: %s (the engine's: %s)", used.text(), running.text())
        yield used
    finally:
        for step in reversed(undo):
            step()


def forget_compiled_code() -> None:
    """Drop dynamo's compiled code: every compiled function compiles again at its next call (from inductor's disk
    cache where it can). Needed whenever the Linears change class under compiled blocks: torch 2.11's dynamo does
    not guard on a submodule's class, so the compiled blocks would go on running the old classes' forwards (an H200
    run, docs/engine.md; torch 2.13 on the CPU recompiles by itself)."""
    import torch._dynamo   # lazy: only compiled engines switch under compiled blocks

    torch._dynamo.reset()


def _switchable_linears(pipe) -> list[nn.Linear]:
    """The DiT's fp8-stored Linears whose forward is their class's (no casting hooks): what a class swap switches."""
    return [m for m in pipe.transformer.modules() if isinstance(m, (UpcastLinear, Fp8Linear))]


def _computes_fp8(device: str) -> bool:
    try:
        return resolve_compute("fp8", device) == "fp8"
    except ValueError:   # a GPU without fp8 tensor cores
        return False


def _switch_compute(linears: list[nn.Linear], compute: str) -> Callable[[], None]:
    """Give the Linears the forward of a recipe's `compute`; returns what puts their classes back."""
    before = [(m, m.__class__) for m in linears]
    kind, _, kernel = compute.partition(KERNEL_SEP)
    if compute == BF16_COPY:      # reachable only while the copy is held (engine/pipeline.py): its Linears
        for m in linears:
            if "bf16_weight" in vars(m):
                m.__class__ = CopiedUpcastLinear
    else:
        swap_linears(linears, kind, kernel or UNNAMED_FP8_KERNEL)

    def put_back() -> None:
        for module, cls in before:
            module.__class__ = cls
    return put_back


def _eager_blocks(blocks: list[nn.Module]) -> Callable[[], None]:
    """Run the blocks' class forward (eager) instead of their compiled one; returns what puts the compiled back."""
    compiled = [(b, b.__dict__.pop("forward")) for b in blocks if "forward" in b.__dict__]

    def put_back() -> None:
        for block, forward in compiled:
            block.forward = forward
    return put_back
