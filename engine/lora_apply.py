"""Active LoRAs as unfused low-rank adds: `y = linear(x) + (x @ D.T) @ U.T` on each changed Linear.

Why unfused (not merged into the weights): the DiT is stored in fp8, and on the lean plans its blocks live in
pinned RAM or in a read-only memory map of the fp8 cache. Merging would mean re-quantising 12 GB of weights
(and losing precision) at every change of LoRA set, and writing the streamed copies; unfused, the stored
weights never change, every placement plan (resident, streamed, disk) runs the same code, and a switch costs
only the small pairs (a rank-64 FLUX LoRA is ~0.3 GiB in bf16). The cost is two thin matmuls per changed
Linear (rank r: r·(in+out) against in·out multiply-adds, ~4% at rank 64 on a 3072² layer).

Several LoRAs on one Linear are one pair: their down matrices stacked, their up matrices side by side with
each LoRA's strength × alpha/rank folded in, so the cost does not grow with the number of LoRAs beyond their
ranks. The pairs live on the execution device; a forward hook (torch's own, so it wraps whatever the Linear's
forward is: diffusers' fp8 casting hooks, fp8 matmuls) adds the delta. Strength 0 LoRAs are left out, and no
LoRA means no hook at all: the model is exactly the one without LoRAs.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from engine.lora_convert import DTYPE, LoraPair, LoraWeights

log = logging.getLogger(__name__)


@dataclass
class _Delta:
    down: torch.Tensor   # (sum of ranks, in)
    up: torch.Tensor     # (out, sum of ranks), strengths and scales folded in


class ActiveLoras:
    """The LoRA set applied to one pipeline; `apply` switches sets, `clear` removes every hook."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.key: tuple = ()
        self._handles: list = []
        self._deltas: dict[tuple[str, str], _Delta] = {}

    @property
    def nbytes(self) -> int:
        """The bytes the active pairs take (a down matrix shared by a fused layer's parts counted once)."""
        unique = {t.data_ptr(): t.numel() * t.element_size() for d in self._deltas.values() for t in (d.down, d.up)}
        return sum(unique.values())

    def components(self) -> set[str]:
        """The models the active set changes ("transformer", "text_encoder")."""
        return {component for component, _ in self._deltas}

    def apply(self, key: tuple, loras: list[tuple[LoraWeights, float]], device: torch.device) -> float:
        """Make `loras` ((weights, strength) pairs) the active set, identified by `key`; returns the seconds the
        switch took (0 when `key` is already active)."""
        if key == self.key:
            return 0.0
        t0 = time.perf_counter()
        # 1. Nothing of the old set survives.
        self.clear()
        # 2. One stacked pair per changed Linear, on the device, strengths folded into the up matrices.
        stacks: dict[tuple[str, str], list[tuple[LoraPair, float]]] = {}
        for weights, strength in loras:
            if strength == 0:
                continue
            for component, modules in weights.pairs.items():
                for module, pair in modules.items():
                    stacks.setdefault((component, module), []).append((pair, strength * pair.scale))
        moved: dict[int, torch.Tensor] = {}   # a fused BFL Linear's parts share one down matrix: one copy of it
        for where, parts in stacks.items():
            self._deltas[where] = _Delta(_stacked_down(parts, device, moved), _stacked_up(parts).to(device, DTYPE))
        # 3. A forward hook on each changed Linear.
        for (component, module), delta in self._deltas.items():
            target = getattr(self.pipe, component).get_submodule(module)
            self._handles.append(target.register_forward_hook(_hook(delta)))
        self.key = key
        seconds = time.perf_counter() - t0
        if self._deltas:
            log.info("LoRA set switched in %.3f s: %d layers, %.1f MiB on %s", seconds, len(self._deltas),
                     self.nbytes / 2**20, device)
        return seconds

    def clear(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._deltas.clear()
        self.key = ()


def _stacked_down(parts: list[tuple[LoraPair, float]], device: torch.device, moved: dict[int, torch.Tensor]
                  ) -> torch.Tensor:
    """The down matrices one above the other, on the device. A lone LoRA's is its matrix as it is (nothing writes to
    it), copied to the device once however many Linears share it (`moved`, by the id of the LoRA's own tensor, which
    its weights keep alive)."""
    if len(parts) == 1:
        down = parts[0][0].down
        if id(down) not in moved:
            moved[id(down)] = down.to(device, DTYPE)
        return moved[id(down)]
    return torch.cat([pair.down for pair, _ in parts], dim=0).to(device, DTYPE)


def _stacked_up(parts: list[tuple[LoraPair, float]]) -> torch.Tensor:
    """The up matrices side by side, each times its factor (strength × alpha/rank), written once into the result.
    The product is `up * factor` in the pairs' dtype on the CPU, as before (bit for bit: the same kernel, written
    in place of a copy); a factor of exactly 1 leaves the matrix as it is (x · 1 is x in every dtype)."""
    if len(parts) == 1:
        pair, factor = parts[0]
        return pair.up if factor == 1.0 else pair.up * factor
    out = torch.empty(parts[0][0].up.shape[0], sum(pair.up.shape[1] for pair, _ in parts), dtype=DTYPE)
    col = 0
    for pair, factor in parts:
        rank = pair.up.shape[1]
        torch.mul(pair.up, factor, out=out[:, col:col + rank])
        col += rank
    return out


def _hook(delta: _Delta):
    def add_delta(module, args, output):
        x = args[0]
        d = delta
        if d.down.device != x.device:   # a plan that runs this layer elsewhere: the pair follows once
            d.down, d.up = d.down.to(x.device), d.up.to(x.device)
        return output + F.linear(F.linear(x.to(DTYPE), d.down), d.up).to(output.dtype)
    return add_delta
