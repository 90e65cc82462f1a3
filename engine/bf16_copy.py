"""A bf16 working copy of the DiT's fp8-stored Linears on the GPU (`[engine] bf16_copy`), for bf16 compute.

bf16 compute (`[engine] compute = "bf16"`, or "auto" on a GPU without fp8 tensor cores) upcasts every fp8 weight to
bf16 at every use: on an H200 those upcasts were 7.2 ms of a 128 ms compiled forward (run fin1), a pass that reads
the 11 GiB of fp8 weights and writes twice as much, every step. When the whole DiT is resident and the GPU has room
left over, one upcast at placement time does the same work once: each Linear keeps `bf16_weight` (and `bf16_bias`)
beside its fp8 weight and multiplies with it.

The same numbers: every float8_e4m3fn value is exactly a bf16 value (3 mantissa bits of 7, an exponent range inside
bf16's), so the copy holds exactly the numbers the per-step upcast makes. Eager, the matmul is the same call and the
pixels are the same bit for bit; compiled blocks on a GPU fuse the upcast with the matmul around it, and without it
inductor fuses otherwise (run fin2: final latents max. 0.078 apart), so the recipe names the copy (compute
"bf16.copy", engine/recipe.py) and /show of a job made without it runs the upcast again (engine/recipe_switch.py).

The fp8 weights stay where they are (the stored form: the streamer, the fp8 cache and a later plan use them); the copy
is additional (~22 GiB for FLUX.1-dev's Linears), so the engine keeps one only where its room rule holds
(`copy_room`), drops it before any re-plan, and drops it for good after an out-of-memory error (engine/pipeline.py).
The Linears change class in place (`CopiedUpcastLinear`, a subclass of `UpcastLinear`), as engine/fp8_compute.py's
`swap_linears` does, so engine/recipe_switch.py's class swaps for one job put the copy back with the class.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.fp8_compute import FP8, UpcastLinear

log = logging.getLogger(__name__)

GiB = 1024 ** 3
# Room kept free beside the copy, over the plan's predicted peak and the allocator's slack: the CUDA graphs of a few
# shapes (under 0.1 GiB each at 1024², batch 1; 1.35 GiB at batch 4, docs/engine.md) and what the prediction misses.
COPY_MARGIN = 2 * GiB


class CopiedUpcastLinear(UpcastLinear):
    """bf16 compute of an fp8-stored Linear from its bf16 working copy: no upcast per call (see the module doc)."""

    bf16_weight: torch.Tensor
    bf16_bias: torch.Tensor | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.bf16_weight, self.bf16_bias)


@dataclass(frozen=True)
class CopyRoom:
    """Whether a copy of `need` bytes fits, and the figures behind the answer (for the log)."""
    fits: bool
    need: int
    room: int
    why: str


def copyable_linears(dit: nn.Module) -> list[UpcastLinear]:
    """The DiT's Linears a copy serves: hook-free bf16 compute (`UpcastLinear`, not yet copied) of fp8 weights."""
    return [m for m in dit.modules() if type(m) is UpcastLinear and m.weight.dtype == FP8]


def copy_bytes(linears: list[nn.Linear]) -> int:
    """Bytes the copy of these Linears takes (2 a value)."""
    return sum(2 * (m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)) for m in linears)


def copy_room(need: int, *, budget_room: int, device_free: int) -> CopyRoom:
    """The room rule: the copy and COPY_MARGIN within what the VRAM budget leaves beside the plan's predicted peak and
    the allocator's slack (`budget_room`), and within what the device has free now beside that peak's transient part
    (`device_free`: another process may hold memory the budget did not see)."""
    room = min(budget_room, device_free) - COPY_MARGIN
    if need <= room:
        return CopyRoom(True, need, room, f"{need / GiB:.2f} GiB within {room / GiB:.2f} GiB of room")
    limit = "the VRAM budget" if budget_room <= device_free else "the free device memory"
    return CopyRoom(False, need, room, f"needs {need / GiB:.2f} GiB + {COPY_MARGIN / GiB:.0f} GiB margin; {limit} "
                    f"leaves {max(room, 0) / GiB:.2f} GiB beside the plan")


def add_copy(linears: list[UpcastLinear]) -> int:
    """Give each Linear its bf16 working copy (on the weight's device) and the copy's forward; returns the bytes.
    All or nothing: when a copy fails (out of memory midway), the ones made are dropped and the error raised."""
    try:
        for m in linears:
            m.bf16_weight = m.weight.detach().to(torch.bfloat16)
            m.bf16_bias = m.bias.detach().to(torch.bfloat16) if m.bias is not None else None
            m.__class__ = CopiedUpcastLinear
    except BaseException:
        for m in linears:
            remove_copy(m)
        raise
    return copy_bytes(linears)


def remove_copy(dit: nn.Module) -> int:
    """Drop every working copy in the DiT (the Linears upcast per call again); returns the bytes freed."""
    freed = 0
    for m in dit.modules():
        if "bf16_weight" not in m.__dict__:
            continue
        freed += copy_bytes([m])
        del m.bf16_weight
        m.__dict__.pop("bf16_bias", None)
        if type(m) is CopiedUpcastLinear:
            m.__class__ = UpcastLinear
    return freed
