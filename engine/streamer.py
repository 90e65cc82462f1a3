"""fluxbot's block streamer: weights live off the device, blocks come to the device just before they run.

One unit type, `BlockStreamer`, and one way to build it, `stream_blocks(...)` (like diffusers'
hooks/group_offloading.py). Each block of a unit has a tier (engine/planner.py):
- `gpu`: moved to the device for good; the ring skips it.
- `pinned`: copied once into the unit's page-locked `HostArena`; streamed arena -> device ring slot.
- `disk`: left where the loader put it (a read-only memory map of a safetensors file: page cache, never
  written, never copied into pinned RAM for good); at each use a copier thread moves it page cache -> a small
  pinned staging buffer -> device ring slot, in chunks.

Pieces:
- `HostArena`: one flat host buffer per model holding every streamed tensor, page-locked once with
  cudaHostRegister (exact size; the caching pinned allocator would round each block up to a power of two).
- `_Packed`: one block's tensors packed at aligned offsets in the arena; it can point the block's
  parameters at the host copy or at any device buffer with the same layout.
- `BlockStreamer`: a ring of `slots` device buffers; forward hooks on each block. Before block i runs, the
  compute stream waits on the event of i's copy; after it runs, its slot's "free" event is recorded and the
  copy stream (which waits on that event) fills the slot with the block `slots - 1` places ahead. With
  `cyclic=True` the order wraps, so the next denoising step's first blocks arrive during this step's last.
  Blocks of the `gpu` tier stay resident and are skipped by the ring. With `keep=True` (a whole small model:
  CLIP, the VAE) all streamed blocks form one group that comes in when any of them is first called and stays
  until another unit takes the device.
- `DeviceLease`: one holder of transient device buffers at a time; taking it releases the last holder
  (the DiT's ring is freed while the VAE decodes, the VAE while T5 encodes…). It also owns what the disk
  tier shares: the copier thread and the pinned staging chunks (only the holder streams).
- `Unit`: the one release/close path every unit (and `HostLookup` in engine/streamer_flux.py) shares.
On device "cpu" the same code runs with host "device" buffers and no streams or events (tests, CI).
fp8 → bf16 upcasts happen per Linear on the compute stream (engine/precision.py's layerwise-casting hooks).
"""
from __future__ import annotations

import bisect
import logging
import mmap
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

from engine.planner import DISK, GPU, PINNED, STAGING_CHUNK, STAGING_CHUNKS, TIERS, group_runs

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

    def capture_origins(self, file_ranges: list[tuple[int, int]]) -> bool:
        """Remember the tensors as they are now if every one is a view of a file mapping (page cache, free
        to keep); True if so. Anonymous tensors are not kept (that would double their RAM)."""
        current = [self._current(e) for e in self.entries]
        if not current or not all(t.device.type == "cpu" and _in_ranges(t.data_ptr(), file_ranges) for t in current):
            return False
        self.origins = current
        return True

    def keep_host(self) -> None:
        """Disk tier: the host copies are the tensors as loaded (memory-mapped views); nothing is copied."""
        self.host_views = [self._current(e) for e in self.entries]

    def chunks(self, size: int) -> list[tuple[int, int, list[tuple[torch.Tensor, int]]]]:
        """The host copies as (start, end, [(source bytes, byte offset in the layout)]) spans of at most
        `size` bytes of the layout, in order: what one staging buffer carries to the device at a time."""
        out: list = []
        start, end, items = 0, 0, []
        for e, view in zip(self.entries, self.host_views):
            flat = view.reshape(-1).view(torch.uint8)
            done = 0
            while done < e.nbytes:
                at = e.offset + done
                if items and at + 1 > start + size:
                    out.append((start, end, items))
                    items = []
                if not items:
                    start = at
                n = min(e.nbytes - done, start + size - at)
                items.append((flat[done:done + n], at))
                done, end = done + n, at + n
        if items:
            out.append((start, end, items))
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


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return [t for t in list(module.parameters()) + list(module.buffers())]


def _file_backed_ranges(maps: str = "/proc/self/maps") -> list[tuple[int, int]]:
    """Address ranges of this process mapped from regular files (Linux; elsewhere none)."""
    out = []
    try:
        with open(maps) as fh:
            for line in fh:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].startswith("/") and not parts[5].startswith("/dev/"):
                    lo, _, hi = parts[0].partition("-")
                    out.append((int(lo, 16), int(hi, 16)))
    except OSError:
        return []
    return sorted(out)


def _in_ranges(ptr: int, ranges: list[tuple[int, int]]) -> bool:
    i = bisect.bisect_right(ranges, (ptr, float("inf"))) - 1
    return i >= 0 and ranges[i][0] <= ptr < ranges[i][1]


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
    """At most one holder of transient device buffers at a time (per device and pipeline), and the pieces
    the disk tier shares: one copier thread and a few pinned staging chunks (only the holder streams)."""

    def __init__(self):
        self.holder = None
        self.units: set[int] = set()
        self._copier: ThreadPoolExecutor | None = None
        self._staging: list[tuple[torch.Tensor, object]] = []
        self._staging_arena: HostArena | None = None
        self._next_chunk = 0

    def acquire(self, unit) -> None:
        if self.holder is unit:
            return
        if self.holder is not None:
            self.holder.release()
        self.holder = unit

    def drop(self, unit) -> None:
        if self.holder is unit:
            self.holder = None

    def copier(self) -> ThreadPoolExecutor:
        """The thread that runs disk-tier copies (torch's copies release the GIL: they overlap the compute)."""
        if self._copier is None:
            self._copier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fluxbot-copier")
        return self._copier

    def staging_chunk(self, device: torch.device) -> tuple[torch.Tensor, object]:
        """The next pinned staging chunk, round robin; the caller waits on its event before writing it."""
        if not self._staging:   # one page-locked arena cut in chunks (freed for real when the last unit closes)
            self._staging_arena = HostArena(STAGING_CHUNK * STAGING_CHUNKS, device)
            buffer = self._staging_arena.buffer
            self._staging = [(buffer[i * STAGING_CHUNK:(i + 1) * STAGING_CHUNK], torch.cuda.Event())
                             for i in range(STAGING_CHUNKS)]
        chunk = self._staging[self._next_chunk]
        self._next_chunk = (self._next_chunk + 1) % len(self._staging)
        return chunk

    def join(self, unit) -> None:
        self.units.add(id(unit))

    def leave(self, unit) -> None:
        """A unit closed; the last one out stops the copier thread and frees the staging chunks."""
        self.drop(unit)
        self.units.discard(id(unit))
        if not self.units:
            if self._copier is not None:
                self._copier.shutdown(wait=True)
                self._copier = None
            self._staging = []
            if self._staging_arena is not None:
                self._staging_arena.close()
                self._staging_arena = None


class Unit:
    """What every unit shares: a lease, hooks and host memory, and the one release/close path."""

    name: str = ""
    lease: DeviceLease
    handles: list
    arena: HostArena | None = None

    def device_bytes(self) -> int:
        """Device bytes held now by transient buffers (resident weights not counted)."""
        return 0

    def _free_device(self) -> None:
        """Give back transient device buffers; every weight points at its host copy again."""

    def release(self) -> None:
        """Free the transient device buffers; the unit comes back on its next call."""
        self._free_device()
        self.lease.drop(self)

    def close(self) -> None:
        """Release, remove the hooks and free the host copies (the model is unusable until placed again)."""
        self.release()
        for h in self.handles:
            h.remove()
        self.handles.clear()
        if self.arena is not None:
            self.arena.close()
        self.lease.leave(self)


# ------------------------------------------------------------------------------------------- the streamer

def stream_blocks(name: str, blocks: list[nn.Module], device: str | torch.device, *,
                  tiers: list[str] | None = None, slots: int = 3, cyclic: bool = True,
                  lease: DeviceLease | None = None, merge: bool = True, keep: bool = False,
                  move_inputs: bool = False) -> "BlockStreamer":
    """Put `blocks` (run in list order) under one streaming unit: each block on its tier (default pinned).

    `keep`: the streamed blocks are one model's parts (CLIP, the VAE): they come in together when any is
    called and stay until another unit takes the lease. `move_inputs`: tensors passed to a block move to the
    device first (callers put inputs where the weights were: host RAM)."""
    return BlockStreamer(name, blocks, device, tiers=tiers, slots=slots, cyclic=cyclic, lease=lease, merge=merge,
                         keep=keep, move_inputs=move_inputs)


class BlockStreamer(Unit):
    """Streams `blocks` (run in list order) through a ring of `slots` device buffers; see `stream_blocks`."""

    def __init__(self, name: str, blocks: list[nn.Module], device: str | torch.device, *,
                 tiers: list[str] | None = None, resident: frozenset[int] = frozenset(), slots: int = 3,
                 cyclic: bool = True, lease: DeviceLease | None = None, merge: bool = True, keep: bool = False,
                 move_inputs: bool = False):
        if slots < 1:
            raise ValueError(f"{name}: the ring needs at least one slot, got {slots}")
        self.name = name
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.blocks = list(blocks)
        self.cyclic = cyclic and not keep
        self.keep = keep
        self.move_inputs = move_inputs
        self.lease = lease or DeviceLease()
        self.lease.join(self)
        self.tiers = list(tiers) if tiers is not None else [GPU if i in resident else PINNED
                                                           for i in range(len(self.blocks))]
        if len(self.tiers) != len(self.blocks) or any(t not in TIERS for t in self.tiers):
            raise ValueError(f"{name}: one tier of {TIERS} per block expected, got {self.tiers}")
        # 1. Blocks loaded from a memory map go back to it when the unit closes (nothing is left behind);
        #    resident blocks go to the device for good; disk-tier blocks must be in host memory.
        ranges = _file_backed_ranges()
        self.restore = [p for p in (_Packed([b]) for b in self.blocks) if p.capture_origins(ranges)]
        self.resident = frozenset(i for i, t in enumerate(self.tiers) if t == GPU)
        for i, tier in enumerate(self.tiers):
            if tier == DISK and any(t.device.type != "cpu" for t in _tensors(self.blocks[i])):
                self.blocks[i].to("cpu")
        for i in sorted(self.resident):
            self.blocks[i].to(self.device)
        # 2. Groups of streamed blocks; pinned groups move into the arena, disk groups stay where they are.
        sizes = [_Packed([b]).nbytes for b in self.blocks]
        streamed = [i for i in range(len(self.blocks)) if i not in self.resident]
        self.groups = ([streamed] if streamed else []) if keep else group_runs(sizes, self.tiers, merge=merge)
        self.group_tier = [self.tiers[g[0]] for g in self.groups]
        self.order = list(range(len(self.groups)))   # positions of the streamed groups, in run order
        self.slots = len(self.order) if keep else min(slots, max(len(self.order), 1))
        pinned = [pos for pos in self.order if self.group_tier[pos] == PINNED]
        self.arena, packed = pack_into_arena([[self.blocks[i] for i in self.groups[pos]] for pos in pinned],
                                             self.device)
        self.packed: dict[int, _Packed] = dict(zip(pinned, packed))
        for pos in self.order:
            if self.group_tier[pos] == DISK:
                self.packed[pos] = _Packed([self.blocks[i] for i in self.groups[pos]])
                self.packed[pos].keep_host()
        self.chunks = {pos: self.packed[pos].chunks(STAGING_CHUNK) for pos in self.order
                       if self.group_tier[pos] == DISK}
        self.disk_bytes = sum(self.packed[pos].nbytes for pos in self.chunks)
        self.slot_bytes = max((p.nbytes for p in self.packed.values()), default=0)
        # 3. Ring state: device buffers (allocated on first use), free slots, blocks in flight.
        self.ring: list[torch.Tensor] = []
        self.free: deque[int] = deque()
        self.inflight: deque[tuple[int, int]] = deque()   # (position in order, slot), in issue order
        self.pending: dict[int, Future] = {}             # disk-tier copies the copier thread is doing
        self.next_pos = 0
        self.view_cache: dict[tuple[int, int], list[torch.Tensor]] = {}
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.ready = {i: torch.cuda.Event() for i in self.order} if self.cuda else {}
        self.slot_free: list = []
        self.slot_used: list[bool] = []
        self.loaded: dict[int, int] = {}                 # keep mode: group position -> its slot
        self.bytes_copied = 0
        self.trace: list | None = None   # start_trace(): timed CUDA events of every copy and block
        # 4. Hooks: a group comes in before its first block and leaves after its last (keep: any block).
        self.handles = []
        for pos, group in enumerate(self.groups):
            firsts = group if keep else group[:1]
            for i in firsts:
                self.handles.append(self.blocks[i].register_forward_pre_hook(self._make_pre_hook(pos),
                                                                             with_kwargs=True))
            if not keep:
                self.handles.append(self.blocks[group[-1]].register_forward_hook(self._make_post_hook(pos)))
        log.info("streamer %s: %d blocks streamed as %d groups (%.2f GiB pinned host%s, %.2f GiB from disk), %d "
                 "resident, ring %d x %.3f GiB on %s", name, len(streamed), len(self.groups), self.arena.nbytes / GiB,
                 ", page-locked" if self.arena.registered else "", self.disk_bytes / GiB, len(self.resident),
                 self.slots, self.slot_bytes / GiB, self.device)

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
        return dict(timeline=timeline, copy_busy_ms=round(busy["copy"], 1), compute_busy_ms=round(busy["compute"], 1),
                    span_ms=round(span, 1), copies=copied, blocks_run=len(starts))

    def _mark(self, kind: str, stream) -> "torch.cuda.Event":
        event = torch.cuda.Event(enable_timing=True)
        event.record(stream)
        return event

    def close(self) -> None:
        super().close()
        for p in self.restore:     # back onto the memory map: the arena and the device copies can go
            p.point(p.origins)
        self.restore = []

    def _free_device(self) -> None:
        """Wait for copies in flight, point every streamed block at its host copy, free the ring."""
        self._wait_pending(list(self.pending))
        if self.cuda and self.copy_stream is not None:
            self.copy_stream.synchronize()
        for pos in {p for p, _slot in self.inflight} | set(self.loaded):
            self.packed[pos].point(self.packed[pos].host_views)
        self.inflight.clear()
        self.loaded.clear()
        self.free.clear()
        self.ring = []
        self.slot_free = []
        self.view_cache.clear()

    # -------------------------------------------------------------------------------- hooks
    def _make_pre_hook(self, pos: int):
        def pre_hook(module, args, kwargs):
            if self.keep:
                self._bring(pos)
            else:
                self._before(pos)
            if self.move_inputs:
                return _to_device(args, self.device), _to_device(kwargs, self.device)
            return None
        return pre_hook

    def _make_post_hook(self, pos: int):
        def post_hook(module, args, output):
            self._after(pos)
        return post_hook

    def _bring(self, pos: int) -> None:
        """keep mode: the group comes in once and stays until the lease goes to another unit."""
        self.lease.acquire(self)
        if not self.ring:
            self._allocate_ring()
        if pos in self.loaded:
            return
        slot = self.free.popleft()
        self._issue(pos, slot)
        self.loaded[pos] = slot
        self._wait_ready(pos)
        self.packed[pos].point(self._slot_views(pos, slot))

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
        self._wait_ready(pos)
        if self.cuda and self.trace is not None:
            self._open = self._mark("compute", torch.cuda.current_stream(self.device))
        self.packed[pos].point(self._slot_views(pos, slot))

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
        block = self.packed[pos]
        block.point(block.host_views)
        self.free.append(slot)
        # 3. Refill the ring right away so the copy engine never idles.
        self._top_up()

    def _wait_ready(self, pos: int) -> None:
        """The compute that follows sees the copy of group `pos` complete."""
        future = self.pending.pop(pos, None)
        if future is not None:
            future.result()      # the copier thread has issued (CPU: done) every chunk; errors surface here
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_event(self.ready[pos])

    # -------------------------------------------------------------------------------- ring
    def _allocate_ring(self) -> None:
        self.ring = [torch.empty(self.slot_bytes, dtype=torch.uint8, device=self.device) for _ in range(self.slots)]
        self.free = deque(range(self.slots))
        self.slot_free = [torch.cuda.Event() for _ in range(self.slots)] if self.cuda else []
        self.slot_used = [False] * self.slots
        if self.cuda:
            # The slots come from the caching allocator on the compute stream: their memory may be a tensor's that
            # was freed while kernels queued on the compute stream still read or write it (an activation of a
            # resident block; another unit's ring). Those kernels are ordered before any compute-stream use of the
            # slots, not before the copy stream's writes: the copy stream waits for them (run 5: mixed plans
            # made NaN images, their first streamed block read weights an activation had overwritten).
            self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))

    def _restart(self, pos: int) -> None:
        """Drop whatever was prefetched (its copies are harmless) and start the sequence at `pos`."""
        if self.inflight:
            log.debug("streamer %s: restart at block %d (expected %d)", self.name, pos, self.inflight[0][0])
        self._wait_pending([p for p, _slot in self.inflight])
        for p, slot in self.inflight:
            if self.cuda:  # an aborted block's kernels may still read its slot: later copies wait for them
                self.slot_free[slot].record(torch.cuda.current_stream(self.device))
            self.packed[p].point(self.packed[p].host_views)
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
        """Start the copy of group `pos` into `slot`: from the arena here, from disk on the copier thread."""
        block = self.packed[pos]
        dst = self.ring[slot][: block.nbytes]
        self.bytes_copied += block.nbytes
        # 1. The slot's last reader must be done (recorded now, before anyone can re-record it).
        if self.cuda and self.slot_used[slot]:
            self.copy_stream.wait_event(self.slot_free[slot])
        if self.cuda:
            self.slot_used[slot] = True
        # 2. Disk tier: page cache -> staging -> device on the copier thread.
        if self.group_tier[pos] == DISK:
            self.pending[pos] = self.lease.copier().submit(self._copy_from_disk, pos, dst)
            return
        # 3. Pinned tier: one copy from the arena.
        src = self.arena.buffer[block.base: block.base + block.nbytes]
        if not self.cuda:
            dst.copy_(src)
            return
        with torch.cuda.stream(self.copy_stream):
            start = self._mark("copy", self.copy_stream) if self.trace is not None else None
            dst.copy_(src, non_blocking=True)
            self.ready[pos].record(self.copy_stream)
            if start is not None:
                self.trace.append(("copy", start, self._mark("copy", self.copy_stream), pos))

    def _copy_from_disk(self, pos: int, dst: torch.Tensor) -> None:
        """(copier thread) Every chunk of group `pos`: host tensors -> pinned staging chunk -> `dst`.
        On the CPU the chunks go straight into `dst`. The host tensors are only read. Inference mode: the ring
        may have been allocated inside the engine's inference_mode (an encode), and this thread is outside it."""
        with torch.inference_mode():
            self._copy_chunks(pos, dst)

    def _copy_chunks(self, pos: int, dst: torch.Tensor) -> None:
        if not self.cuda:
            for start, end, items in self.chunks[pos]:
                for src, at in items:
                    dst[at: at + src.numel()].copy_(src)
            return
        with torch.cuda.device(self.device), torch.cuda.stream(self.copy_stream):
            for start, end, items in self.chunks[pos]:
                buffer, done = self.lease.staging_chunk(self.device)
                done.synchronize()               # its previous copy to the device has finished
                for src, at in items:
                    buffer[at - start: at - start + src.numel()].copy_(src)
                dst[start:end].copy_(buffer[: end - start], non_blocking=True)
                done.record(self.copy_stream)
            self.ready[pos].record(self.copy_stream)

    def _wait_pending(self, positions: list[int]) -> None:
        for p in positions:
            future = self.pending.pop(p, None)
            if future is not None:
                future.result()

    def _slot_views(self, pos: int, slot: int) -> list[torch.Tensor]:
        key = (pos, slot)
        views = self.view_cache.get(key)
        if views is None:
            views = self.packed[pos].views(self.ring[slot])
            self.view_cache[key] = views
        return views


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
