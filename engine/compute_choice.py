"""`[engine] compute` and `compile` resolved for a device: the one rule the engine (engine/pipeline.py) and the
placement planner's compute figures (engine/memory.py's `compute_costs`) share. Its own module so that neither
imports the other for it."""
from __future__ import annotations

import logging

from engine.compile import compile_wanted
from engine.errors import EngineError
from engine.fp8_compute import resolve_compute
from engine.settings import EngineSettings

log = logging.getLogger(__name__)


def compute_and_compile(settings: EngineSettings, device: str) -> tuple[str, bool]:
    """`[engine] compute` and `compile` resolved for `device` (fp8 compute needs fp8 weights and sm_89+)."""
    try:
        compute = resolve_compute(settings.compute, device)
    except ValueError as e:
        raise EngineError(str(e)) from None
    if settings.fp8 == "off" and compute == "fp8":
        log.info("[engine] compute = %r: the DiT is stored in bf16 (fp8 = \"off\"), so it computes in bf16",
                 settings.compute)
        compute = "bf16"
    compiled = compile_wanted(settings.compile, device)
    if settings.compute == "auto" and compute == "fp8" and not compiled:
        log.info("[engine] compute = \"auto\": bf16, since the DiT is not compiled (eager fp8 matmuls are slower "
                 "than bf16's: their activation scaling is not fused)")
        compute = "bf16"
    return compute, compiled
