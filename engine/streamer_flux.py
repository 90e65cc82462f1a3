"""Wiring fluxbot's streamer into a FluxPipeline (the `streamed` memory profile).

- DiT: the 19 double and 38 single blocks stream through a 3-slot ring (cyclic: the next step's first
  blocks arrive during this step's last); blocks that fit `vram_budget_bytes` stay resident, spread evenly
  so the copy engine can run ahead during them. The small rest (embedders, final norm) stays on the device.
- T5: its 24 encoder blocks stream the same way (not cyclic: one encode per prompt); the final norm stays on
  the device; the 32k×4096 token embedding stays in host RAM and is looked up there (4 MB comes over).
- CLIP and the VAE decoder: whole-model swaps, on the device only during their turn.
All units share one `DeviceLease`, so only one unit's transient buffers exist at a time.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from engine.streamer import BlockStreamer, DeviceLease, ModelSwap, _Packed

log = logging.getLogger(__name__)

GiB = 1024 ** 3
# Pair FLUX's single blocks into one ring slot (see engine.streamer._group_blocks); the bench can turn it off.
MERGE_GROUPS = True


def stream_pipeline(pipe, device: str, *, vram_budget_bytes: int = 0, slots: int = 3, lean_cast: bool = True) -> list:
    """Apply the streamed profile to `pipe` in place; returns the units (each has `close()`)."""
    dev = torch.device(device)
    lease = DeviceLease()
    units: list = []
    # 1. The DiT: blocks stream (or stay resident within the budget); the rest lives on the device.
    dit = pipe.transformer
    blocks = list(dit.transformer_blocks) + list(dit.single_transformer_blocks)
    if lean_cast:
        lean_layerwise_casting(blocks)
    rest_bytes = _move_rest(dit, blocks, dev)
    sizes = [_Packed([b]).nbytes for b in blocks]
    resident = choose_resident(sizes, vram_budget_bytes - rest_bytes, slots)
    units.append(BlockStreamer("dit", blocks, dev, slots=slots, resident=resident, cyclic=True, lease=lease,
                               merge=MERGE_GROUPS))
    # 2. T5: blocks stream; the embedding table is used from host RAM.
    t5 = getattr(pipe, "text_encoder_2", None)
    if t5 is not None:
        t5_blocks = list(t5.encoder.block)
        embed = t5.encoder.embed_tokens
        tables = [m for m in (embed, getattr(t5, "shared", None)) if m is not None]  # tied or not: both host
        _move_rest(t5, t5_blocks + tables, dev)
        for table in tables[1:]:
            if table is not embed:
                table.to("cpu")
        units.append(HostLookup("t5-embedding", embed, dev))
        # T5 encodes in ~0.2 s even with 2 blocks ahead; a deeper ring would only raise the encode peak.
        units.append(BlockStreamer("t5", t5_blocks, dev, slots=min(slots, 3), cyclic=False, lease=lease))
    # 3. CLIP and the VAE decoder come in for their turn.
    clip = getattr(pipe, "text_encoder", None)
    if clip is not None:
        units.append(ModelSwap("clip", [clip], dev, lease=lease))
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        # The encoder (image-to-image) swaps in with the decoder: nothing of the VAE stays on the device.
        parts = [getattr(vae, n, None) for n in ("decoder", "post_quant_conv", "encoder", "quant_conv")]
        units.append(ModelSwap("vae", [m for m in parts if m is not None], dev, lease=lease))
    return units


def lean_layerwise_casting(modules: list[nn.Module]) -> int:
    """Make diffusers' layerwise-casting hooks inside `modules` skip the fp8 re-cast after each forward.

    diffusers' hook casts a Linear to bf16 before its forward and back to fp8 after it: the second cast is
    a kernel that reads 2 bytes and writes 1 per weight and allocates, only to produce a copy of the fp8
    weights the layer already had. Here the fp8 tensors are kept aside before the upcast and put back after
    the forward (no kernel). The upcast itself stays on the compute stream. Returns the layers changed.
    """
    from diffusers.hooks import HookRegistry

    changed = 0
    for root in modules:
        for module in root.modules():
            registry = getattr(module, "_diffusers_hook", None)
            hook = registry.get_hook("layerwise_casting") if isinstance(registry, HookRegistry) else None
            if hook is None:
                continue
            index = registry._hook_order.index("layerwise_casting")
            fn_ref = registry._fn_refs[index]
            kept: dict[str, torch.Tensor] = {}

            def pre_forward(mod, *args, _hook=hook, _kept=kept, **kwargs):
                for name, param in mod.named_parameters(recurse=False):
                    if param.dtype == _hook.storage_dtype:
                        _kept[name] = param.data
                        param.data = param.data.to(_hook.compute_dtype)
                return args, kwargs

            def post_forward(mod, output, _kept=kept):
                for name, param in mod.named_parameters(recurse=False):
                    if name in _kept:
                        param.data = _kept.pop(name)
                return output

            fn_ref.pre_forward, fn_ref.post_forward = pre_forward, post_forward
            changed += 1
    log.debug("lean layerwise casting on %d layers", changed)
    return changed


def choose_resident(block_bytes: list[int], budget: int, slots: int) -> frozenset[int]:
    """Blocks kept on the device: as many as fit in `budget` after the ring, spread evenly over the order."""
    n = len(block_bytes)
    if n == 0 or budget <= 0:
        return frozenset()
    # 1. If everything fits without a ring, keep everything.
    if sum(block_bytes) <= budget:
        return frozenset(range(n))
    # 2. The ring comes first; then count how many average blocks fit in what is left.
    available = budget - slots * max(block_bytes)
    if available <= 0:
        return frozenset()
    count = min(n - 1, int(available // (sum(block_bytes) / n)))
    # 3. Evenly spaced picks, dropped from the end until they really fit.
    picks = sorted({round(k * n / count) for k in range(count)}) if count > 0 else []
    while picks and sum(block_bytes[i] for i in picks) > available:
        picks.pop()
    return frozenset(picks)


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


class HostLookup:
    """An embedding table that stays in host RAM: ids go to the host, only the looked-up rows come over."""

    def __init__(self, name: str, embedding: nn.Module, device: torch.device):
        self.name = name
        self.device = device
        embedding.to("cpu")
        self.handles = [embedding.register_forward_pre_hook(self._to_host),
                        embedding.register_forward_hook(self._to_device)]

    @staticmethod
    def _to_host(module, args):
        return tuple(a.to("cpu") if isinstance(a, torch.Tensor) else a for a in args)

    def _to_device(self, module, args, output):
        return output.to(self.device, non_blocking=True)

    def device_bytes(self) -> int:
        return 0

    def release(self) -> None:
        pass

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
