"""Wiring fluxbot's streamer into a FluxPipeline: the executor of a planner `Placement`.

- DiT: every block on its tier (engine/planner.py): `gpu` blocks stay resident (spread over the order by the
  planner so the copy engine can run ahead during them), `pinned` and `disk` blocks stream through one ring
  (cyclic: the next step's first blocks arrive during this step's last). The small rest (embedders, final
  norm) stays on the device.
- T5: resident as a whole when every block is `gpu`; else its 24 blocks stream the same way (not cyclic: one
  encode per prompt), the final norm stays on the device and the 32k×4096 token embedding stays in host RAM
  and is looked up there (4 MB comes over). With every block on `disk`, T5 holds neither RAM nor VRAM between
  prompts (its blocks are read from the page cache at encode time).
- CLIP and the VAE: resident, or whole-model units that come in for their turn (from pinned RAM or disk).
All units share one `DeviceLease`, so only one unit's transient buffers exist at a time.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from engine.planner import GPU, Placement
from engine.precision import lean_layerwise_casting
from engine.streamer import DeviceLease, Unit, stream_blocks

log = logging.getLogger(__name__)

GiB = 1024 ** 3
# Pair FLUX's single blocks into one ring slot (see engine.planner.group_runs); the bench can turn it off.
MERGE_GROUPS = True


def dit_blocks(pipe) -> list[nn.Module]:
    """The DiT's blocks in run order: double blocks, then single blocks (the planner's order)."""
    dit = pipe.transformer
    return list(dit.transformer_blocks) + list(dit.single_transformer_blocks)


def t5_blocks(pipe) -> list[nn.Module]:
    t5 = getattr(pipe, "text_encoder_2", None)
    return list(t5.encoder.block) if t5 is not None else []


def apply_placement(pipe, placement: Placement, device: str, *, slots: int = 3, lean_cast: bool = True) -> list:
    """Place `pipe`'s weights as `placement` says, in place; returns the units (each has `close()`)."""
    dev = torch.device(device)
    lease = DeviceLease()
    units: list = []
    # 1. The DiT: blocks on their tiers; the rest lives on the device.
    dit = pipe.transformer
    blocks = dit_blocks(pipe)
    if len(placement.dit) != len(blocks):
        raise ValueError(f"the placement has {len(placement.dit)} DiT tiers for {len(blocks)} blocks")
    if lean_cast:
        lean_layerwise_casting(blocks)
    _move_rest(dit, blocks, dev)
    dit_unit = stream_blocks("dit", blocks, dev, tiers=list(placement.dit), slots=slots, cyclic=True, lease=lease,
                             merge=MERGE_GROUPS)
    # The DiT takes the lease as its forward starts, not at its first streamed block: the text encoders' ring
    # must not stay allocated under the first resident blocks (run 4's 16/12 plan ran out of memory so).
    dit_unit.handles.append(dit.register_forward_pre_hook(lambda _m, _a: lease.acquire(dit_unit)))
    units.append(dit_unit)
    # 2. T5: resident as a whole, or blocks on their tiers with the embedding table used from host RAM.
    t5 = getattr(pipe, "text_encoder_2", None)
    if t5 is not None:
        units.extend(_place_t5(t5, list(placement.t5), dev, slots, lease))
    # 3. CLIP and the VAE: resident, or they come in for their turn.
    clip = getattr(pipe, "text_encoder", None)
    if clip is not None:
        units.extend(_place_whole("clip", [clip], placement.clip, dev, lease))
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        # The encoder (image-to-image) travels with the decoder: nothing of the VAE stays on the device.
        parts = [getattr(vae, n, None) for n in ("decoder", "post_quant_conv", "encoder", "quant_conv")]
        units.extend(_place_whole("vae", [vae] if placement.vae == GPU else [m for m in parts if m is not None],
                                  placement.vae, dev, lease))
    return units


def _place_t5(t5: nn.Module, tiers: list[str], dev: torch.device, slots: int, lease: DeviceLease) -> list:
    blocks = list(t5.encoder.block)
    if len(tiers) != len(blocks):
        raise ValueError(f"the placement has {len(tiers)} T5 tiers for {len(blocks)} blocks")
    if all(t == GPU for t in tiers):   # a unit all the same: the weights go back onto their memory map on close
        return [stream_blocks("t5", [t5], dev, tiers=[GPU], lease=lease)]
    embed = t5.encoder.embed_tokens
    tables = [m for m in (embed, getattr(t5, "shared", None)) if m is not None]  # tied or not: both host
    _move_rest(t5, blocks + tables, dev)
    for table in tables[1:]:
        if table is not embed:
            table.to("cpu")
    # T5 encodes in ~0.2 s even with 2 blocks ahead; a deeper ring would only raise the encode peak.
    return [HostLookup("t5-embedding", embed, dev, lease),
            stream_blocks("t5", blocks, dev, tiers=tiers, slots=min(slots, 3), cyclic=False, lease=lease)]


def _place_whole(name: str, modules: list[nn.Module], tier: str, dev: torch.device, lease: DeviceLease) -> list:
    if tier == GPU:
        return [stream_blocks(name, modules, dev, tiers=[GPU] * len(modules), lease=lease)]
    return [stream_blocks(name, modules, dev, tiers=[tier] * len(modules), keep=True, move_inputs=True,
                          lease=lease)]


def _move_rest(model: nn.Module, skip: list[nn.Module], device: torch.device) -> int:
    """Move every parameter/buffer of `model` outside the `skip` subtrees to `device`; returns bytes moved."""
    skipped = {id(m) for s in skip for m in s.modules()}
    moved = 0
    for module in model.modules():
        if id(module) in skipped:
            continue
        for table in (module._parameters, module._buffers):
            for name, t in table.items():
                if t is None:
                    continue
                if isinstance(t, nn.Parameter):
                    t.data = t.data.to(device)
                else:
                    table[name] = t.to(device)
                moved += t.numel() * t.element_size()
    return moved


class HostLookup(Unit):
    """An embedding table that stays in host RAM: ids go to the host, only the looked-up rows come over."""

    def __init__(self, name: str, embedding: nn.Module, device: torch.device, lease: DeviceLease | None = None):
        self.name = name
        self.device = device
        self.lease = lease or DeviceLease()
        self.lease.join(self)
        embedding.to("cpu")
        self.handles = [embedding.register_forward_pre_hook(self._to_host),
                        embedding.register_forward_hook(self._to_device)]

    @staticmethod
    def _to_host(module, args):
        return tuple(a.to("cpu") if isinstance(a, torch.Tensor) else a for a in args)

    def _to_device(self, module, args, output):
        return output.to(self.device, non_blocking=True)
