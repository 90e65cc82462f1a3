"""fluxbot's block streamer: weights live in host RAM, blocks come to the device just before they run.

Pieces:
- `HostArena`: one flat host buffer per model holding every streamed tensor, page-locked once with
  cudaHostRegister (exact size; the caching pinned allocator would round each block up to a power of two).
- `_Packed`: one block's tensors packed at aligned offsets in the arena; it can point the block's
  parameters at the host copy or at any device buffer with the same layout.
- `BlockStreamer`: a ring of `slots` device buffers; forward hooks on each block. Before block i runs, the
  compute stream waits on the event of i's copy; after it runs, its slot's "free" event is recorded and the
  copy stream (which waits on that event) fills the slot with the block `slots - 1` places ahead. With
  `cyclic=True` the order wraps, so the next denoising step's first blocks arrive during this step's last.
  Blocks chosen by the VRAM budget stay resident and are skipped by the ring.
- `ModelSwap`: a whole small model (CLIP, the VAE decoder) that comes in when first called and stays until
  another unit takes the device.
- `DeviceLease`: one holder of transient device buffers at a time; taking it releases the last holder
  (the DiT's ring is freed while the VAE decodes, the VAE while T5 encodes…).
On device "cpu" the same code runs with host "device" buffers and no streams or events (tests, CI).
fp8 → bf16 upcasts happen per Linear on the compute stream (engine/precision.py's layerwise-casting hooks).
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

GiB = 1024 ** 3
ALIGN = 256  # bytes: every tensor starts on a 256-byte boundary in host and device buffers


# ------------------------------------------------------------------------------------------- host memory

class HostArena:
    """A flat uint8 host buffer, page-locked when the target is a CUDA device."""

    def __init__(self, nbytes: int, device: torch.device):
        self.nbytes = nbytes
        self.buffer = _host_buffer(nbytes) if device.type == "cuda" else torch.empty(max(nbytes, 1), dtype=torch.uint8)
        self.registered = False
        if device.type == "cuda" and nbytes > 0:
            self.registered = _host_register(self.buffer)

    def close(self) -> None:
        if self.registered:
            torch.cuda.cudart().cudaHostUnregister(self.buffer.data_ptr())
            self.registered = False
        self.buffer = torch.empty(0, dtype=torch.uint8)


def _host_buffer(nbytes: int) -> torch.Tensor:
    """Anonymous host memory, backed by transparent huge pages where the kernel allows (fewer pages for the
    DMA engine to translate: set FLUXBOT_ARENA_THP=0 to compare)."""
    import mmap
    import os

    region = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if os.environ.get("FLUXBOT_ARENA_THP", "1") != "0" and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            region.madvise(mmap.MADV_HUGEPAGE)
        except OSError as err:  # THP disabled: plain pages work too
            log.debug("MADV_HUGEPAGE refused: %s", err)
    return torch.frombuffer(region, dtype=torch.uint8)


def _host_register(buffer: torch.Tensor) -> bool:
    """Page-lock `buffer` in place; False (with a warning) when the CUDA runtime refuses."""
    err = torch.cuda.cudart().cudaHostRegister(buffer.data_ptr(), buffer.numel(), 0)
    code = getattr(err, "value", err)
    if code != 0:
        log.warning("cudaHostRegister of %.2f GiB failed (error %s): host copies stay pageable and stream "
                    "slower; check the memlock limit (ulimit -l)", buffer.numel() / GiB, code)
        return False
    return True


@dataclass
class _Entry:
    module: nn.Module
    name: str
    is_param: bool
    offset: int
    dtype: torch.dtype
    shape: torch.Size
    nbytes: int


class _Packed:
    """The tensors of a group of modules laid out at aligned offsets, like a C struct."""

    def __init__(self, modules: list[nn.Module]):
        # 1. Collect every parameter and buffer once (tied weights appear once).
        self.entries: list[_Entry] = []
        seen: set[int] = set()
        offset = 0
        for root in modules:
            for module in root.modules():
                for is_param, table in ((True, module._parameters), (False, module._buffers)):
                    for name, t in table.items():
                        if t is None or id(t) in seen:
                            continue
                        seen.add(id(t))
                        nbytes = t.numel() * t.element_size()
                        self.entries.append(_Entry(module, name, is_param, offset, t.dtype, t.shape, nbytes))
                        offset += -(-nbytes // ALIGN) * ALIGN
        self.nbytes = offset
        self.base = 0  # byte offset of this layout inside its arena
        self.host_views: list[torch.Tensor] = []

    def views(self, buffer: torch.Tensor, base: int = 0) -> list[torch.Tensor]:
        """Typed views of this layout inside a flat uint8 buffer starting at byte `base`."""
        out = []
        for e in self.entries:
            raw = buffer[base + e.offset: base + e.offset + e.nbytes]
            out.append(raw.view(e.dtype).view(e.shape))
        return out

    def fill_host(self, arena: HostArena, base: int) -> None:
        """Copy the current tensors into the arena and point the modules at the host copies."""
        self.host_views = self.views(arena.buffer, base)
        for e, view in zip(self.entries, self.host_views):
            view.copy_(self._current(e))
        self.point(self.host_views)

    def point(self, views: list[torch.Tensor]) -> None:
        """Point every parameter/buffer at the given views (no copy)."""
        for e, view in zip(self.entries, views):
            if e.is_param:
                e.module._parameters[e.name].data = view
            else:
                e.module._buffers[e.name] = view

    @staticmethod
    def _current(e: _Entry) -> torch.Tensor:
        t = e.module._parameters[e.name] if e.is_param else e.module._buffers[e.name]
        return t.detach()


def pack_into_arena(groups: list[list[nn.Module]], device: torch.device) -> tuple[HostArena, list[_Packed]]:
    """One arena for several module groups; each group's tensors move into it (originals are freed)."""
    packed = [_Packed(g) for g in groups]
    arena = HostArena(sum(p.nbytes for p in packed), device)
    base = 0
    for p in packed:
        p.fill_host(arena, base)
        p.base = base
        base += p.nbytes
    return arena, packed


# ------------------------------------------------------------------------------------------------ leases

class DeviceLease:
    """At most one holder of transient device buffers at a time (per device and pipeline)."""

    def __init__(self):
        self.holder = None

    def acquire(self, unit) -> None:
        if self.holder is unit:
            return
        if self.holder is not None:
            self.holder.release()
        self.holder = unit

    def drop(self, unit) -> None:
        if self.holder is unit:
            self.holder = None


# ------------------------------------------------------------------------------------------- the streamer

class BlockStreamer:
    """Streams `blocks` (run in list order) through a ring of `slots` device buffers."""

    def __init__(self, name: str, blocks: list[nn.Module], device: str | torch.device, *, slots: int = 3,
                 resident: frozenset[int] = frozenset(), cyclic: bool = True, lease: DeviceLease | None = None,
                 merge: bool = True):
        if slots < 1:
            raise ValueError(f"{name}: the ring needs at least one slot, got {slots}")
        self.name = name
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.blocks = list(blocks)
        self.cyclic = cyclic
        self.lease = lease or DeviceLease()
        # 1. Resident blocks go to the device for good; the others are packed into pinned host RAM.
        self.resident = frozenset(resident)
        for i in sorted(self.resident):
            self.blocks[i].to(self.device)
        self.groups = _group_blocks(self.blocks, self.resident, merge=merge)
        self.order = list(range(len(self.groups)))   # positions of the streamed groups, in run order
        self.slots = min(slots, max(len(self.order), 1))
        self.arena, packed = pack_into_arena([[self.blocks[i] for i in g] for g in self.groups], self.device)
        self.packed = dict(enumerate(packed))
        self.slot_bytes = max((p.nbytes for p in packed), default=0)
        # 2. Ring state: device buffers (allocated on first use), free slots, blocks in flight.
        self.ring: list[torch.Tensor] = []
        self.free: deque[int] = deque()
        self.inflight: deque[tuple[int, int]] = deque()   # (position in order, slot), in issue order
        self.next_pos = 0
        self.view_cache: dict[tuple[int, int], list[torch.Tensor]] = {}
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.ready = {i: torch.cuda.Event() for i in self.order} if self.cuda else {}
        self.slot_free: list = []
        self.bytes_copied = 0
        self.trace: list | None = None   # start_trace(): timed CUDA events of every copy and block
        # 3. Hooks on the streamed blocks.
        self.handles = []
        for pos, group in enumerate(self.groups):   # a group comes in before its first block, leaves after its last
            self.handles.append(self.blocks[group[0]].register_forward_pre_hook(self._make_pre_hook(pos)))
            self.handles.append(self.blocks[group[-1]].register_forward_hook(self._make_post_hook(pos)))
        log.info("streamer %s: %d blocks streamed as %d groups (%.2f GiB host%s), %d resident, ring %d x %.3f GiB "
                 "on %s", name, sum(len(g) for g in self.groups), len(self.groups), self.arena.nbytes / GiB,
                 ", page-locked" if self.arena.registered else "", len(self.resident), self.slots,
                 self.slot_bytes / GiB, self.device)

    # -------------------------------------------------------------------------------- public
    @property
    def ring_bytes(self) -> int:
        return self.slots * self.slot_bytes

    def device_bytes(self) -> int:
        """Device bytes held now by the ring (resident blocks not counted)."""
        return sum(t.numel() for t in self.ring)

    def start_trace(self) -> None:
        """Record timed CUDA events around every copy and every block's compute from now on."""
        self.trace = [] if self.cuda else None

    def trace_summary(self) -> dict:
        """Busy milliseconds of the copy engine and of the compute stream over the traced span."""
        if not self.trace:
            return {}
        torch.cuda.synchronize(self.device)
        busy = {"copy": 0.0, "compute": 0.0}
        for kind, start, end, _pos in self.trace:
            busy[kind] += start.elapsed_time(end)
        starts = [t for t in self.trace if t[0] == "compute"]
        span = starts[0][1].elapsed_time(starts[-1][2]) if starts else 0.0
        copied = sum(1 for t in self.trace if t[0] == "copy")
        origin = starts[0][1] if starts else self.trace[0][1]
        last = self.trace[-(2 * len(self.order)):]  # about one pass: when each copy and block ran (ms)
        timeline = [(kind, pos, round(origin.elapsed_time(a), 2), round(origin.elapsed_time(b), 2))
                    for kind, a, b, pos in last]
        return dict(timeline=timeline,copy_busy_ms=round(busy["copy"], 1), compute_busy_ms=round(busy["compute"], 1),
                    span_ms=round(span, 1), copies=copied, blocks_run=len(starts))

    def _mark(self, kind: str, stream) -> "torch.cuda.Event":
        event = torch.cuda.Event(enable_timing=True)
        event.record(stream)
        return event

    def release(self) -> None:
        """Wait for copies in flight, point every streamed block at its host copy, free the ring."""
        if self.cuda and self.copy_stream is not None:
            self.copy_stream.synchronize()
        for pos, _slot in self.inflight:
            self.packed[self.order[pos]].point(self.packed[self.order[pos]].host_views)
        self.inflight.clear()
        self.free.clear()
        self.ring = []
        self.slot_free = []
        self.view_cache.clear()
        self.lease.drop(self)

    def close(self) -> None:
        """Release the ring, remove the hooks and unpin the host arena (the model becomes unusable)."""
        self.release()
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.arena.close()

    # -------------------------------------------------------------------------------- hooks
    def _make_pre_hook(self, pos: int):
        def pre_hook(module, args):
            self._before(pos)
        return pre_hook

    def _make_post_hook(self, pos: int):
        def post_hook(module, args, output):
            self._after(pos)
        return post_hook

    def _before(self, pos: int) -> None:
        # 1. Own the device; a ring freed by another holder is allocated again.
        self.lease.acquire(self)
        if not self.ring:
            self._allocate_ring()
        # 2. The expected block is first in flight; anything else (first call, an aborted run) restarts.
        if not self.inflight or self.inflight[0][0] != pos:
            self._restart(pos)
        self._top_up()
        # 3. Compute waits for this block's copy, then reads the weights from its slot.
        _, slot = self.inflight[0]
        if self.cuda:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(self.ready[self.order[pos]])
            if self.trace is not None:
                self._open = self._mark("compute", compute)
        self.packed[self.order[pos]].point(self._slot_views(pos, slot))

    def _after(self, pos: int) -> None:
        # 1. The slot becomes free once the compute stream is past this block.
        done_pos, slot = self.inflight.popleft()
        if self.cuda:
            self.slot_free[slot].record(torch.cuda.current_stream(self.device))
            if self.trace is not None and getattr(self, "_open", None) is not None:
                self.trace.append(("compute", self._open, self._mark("compute", torch.cuda.current_stream(self.device)),
                                   pos))
                self._open = None
        # 2. The block points at its host copy again; no device tensor of it survives the block.
        block = self.packed[self.order[pos]]
        block.point(block.host_views)
        self.free.append(slot)
        # 3. Refill the ring right away so the copy engine never idles.
        self._top_up()

    # -------------------------------------------------------------------------------- ring
    def _allocate_ring(self) -> None:
        self.ring = [torch.empty(self.slot_bytes, dtype=torch.uint8, device=self.device) for _ in range(self.slots)]
        self.free = deque(range(self.slots))
        self.slot_free = [torch.cuda.Event() for _ in range(self.slots)] if self.cuda else []
        self.slot_used = [False] * self.slots

    def _restart(self, pos: int) -> None:
        """Drop whatever was prefetched (its copies are harmless) and start the sequence at `pos`."""
        if self.inflight:
            log.debug("streamer %s: restart at block %d (expected %d)", self.name, pos, self.inflight[0][0])
        for p, slot in self.inflight:
            if self.cuda:  # an aborted block's kernels may still read its slot: later copies wait for them
                self.slot_free[slot].record(torch.cuda.current_stream(self.device))
            self.packed[self.order[p]].point(self.packed[self.order[p]].host_views)
            self.free.append(slot)
        self.inflight.clear()
        self.next_pos = pos

    def _top_up(self) -> None:
        """Issue copies until every slot holds a block that is about to run."""
        while self.free:
            if self.next_pos >= len(self.order):
                if not self.cyclic:
                    return
                self.next_pos = 0
            if any(p == self.next_pos for p, _ in self.inflight):
                return  # the ring already holds the whole cycle
            slot = self.free.popleft()
            self._issue(self.next_pos, slot)
            self.inflight.append((self.next_pos, slot))
            self.next_pos += 1

    def _issue(self, pos: int, slot: int) -> None:
        block = self.packed[self.order[pos]]
        src = self.arena.buffer[block.base: block.base + block.nbytes]
        dst = self.ring[slot][: block.nbytes]
        self.bytes_copied += block.nbytes
        if not self.cuda:
            dst.copy_(src)
            return
        with torch.cuda.stream(self.copy_stream):
            if self.slot_used[slot]:
                self.copy_stream.wait_event(self.slot_free[slot])
            start = self._mark("copy", self.copy_stream) if self.trace is not None else None
            dst.copy_(src, non_blocking=True)
            self.ready[self.order[pos]].record(self.copy_stream)
            if start is not None:
                self.trace.append(("copy", start, self._mark("copy", self.copy_stream), pos))
        self.slot_used[slot] = True

    def _slot_views(self, pos: int, slot: int) -> list[torch.Tensor]:
        key = (pos, slot)
        views = self.view_cache.get(key)
        if views is None:
            views = self.packed[self.order[pos]].views(self.ring[slot])
            self.view_cache[key] = views
        return views


def _group_blocks(blocks: list[nn.Module], resident: frozenset[int], *, merge: bool) -> list[list[int]]:
    """Consecutive streamed blocks merged while a group stays within the largest block's bytes.

    FLUX's single blocks are 0.42x a double block: paired, they fill a ring slot, so the same ring holds
    twice as many of them and the copy engine gets further ahead during the (compute-bound) single blocks,
    a lead it then spends on the (copy-bound) double blocks.
    """
    streamed = [i for i in range(len(blocks)) if i not in resident]
    sizes = {i: _Packed([blocks[i]]).nbytes for i in streamed}
    cap = max(sizes.values(), default=0)
    groups: list[list[int]] = []
    for i in streamed:
        last = groups[-1] if groups else None
        if (merge and last and last[-1] == i - 1 and sum(sizes[j] for j in last) + sizes[i] <= cap):
            last.append(i)
        else:
            groups.append([i])
    return groups


class ModelSwap:
    """A small model that comes to the device when one of its modules is called and stays until another
    unit takes the lease (CLIP while prompts encode, the VAE decoder while images decode)."""

    def __init__(self, name: str, modules: list[nn.Module], device: str | torch.device, *,
                 lease: DeviceLease | None = None):
        self.name = name
        self.device = torch.device(device)
        self.lease = lease or DeviceLease()
        self.arena, (self.packed,) = pack_into_arena([modules], self.device)
        self.device_buffer: torch.Tensor | None = None
        self.bytes_copied = 0
        self.handles = [m.register_forward_pre_hook(self._pre_hook, with_kwargs=True) for m in modules]
        log.info("model swap %s: %.3f GiB comes to %s when used", name, self.arena.nbytes / GiB, self.device)

    def device_bytes(self) -> int:
        return 0 if self.device_buffer is None else self.device_buffer.numel()

    def _pre_hook(self, module, args, kwargs):
        # 1. Take the device and bring the weights (same stream as the compute that follows: ordered).
        self.lease.acquire(self)
        if self.device_buffer is None:
            self.device_buffer = self.arena.buffer.to(self.device, non_blocking=self.arena.registered)
            self.bytes_copied += self.arena.nbytes
            self.packed.point(self.packed.views(self.device_buffer))
        # 2. Callers place inputs where the model's weights were (host RAM): bring them along.
        return _to_device(args, self.device), _to_device(kwargs, self.device)

    def release(self) -> None:
        if self.device_buffer is not None:
            self.packed.point(self.packed.host_views)
            self.device_buffer = None
        self.lease.drop(self)

    def close(self) -> None:
        self.release()
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.arena.close()


def _to_device(value, device: torch.device):
    """Tensors inside tuples/lists/dicts moved to `device`; anything else as is."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value
