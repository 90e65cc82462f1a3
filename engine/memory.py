"""Memory placement: the planner's plan (engine/planner.py) for this machine, applied to a pipeline.

- `detect_budgets(settings, device) -> Budgets`: the VRAM and host RAM fluxbot may use. `[engine]
  vram_budget_gib` / `ram_budget_gib` when set (checked against the machine: an error names the key), else
  measured: free VRAM (and a `set_per_process_memory_fraction` cap) minus a margin; host RAM available =
  min(MemAvailable, the room under every cgroup v2 `memory.max` / v1 limit of this process: limit − usage +
  its reclaimable page cache) minus a reserve.
- `pipe_sizes(pipe) -> ModelSizes`: bytes of each block and model as stored (measured on the loaded pipeline).
- `make_plan(settings, device, sizes, budgets, profile) -> Plan`: the planner's inputs from the settings (its
  compute figures for the recipe the engine runs: `compute_costs`).
- `apply_plan(pipe, plan, device, settings) -> MemoryPlan`: the executor (engine/streamer_flux.py), or
  diffusers' model CPU offload for the forced `model-offload`.
- `leaner(profile)`: the profile an OOM retry moves to.

Layerwise casting (engine/precision.py) is applied before any placement, so host copies are fp8.
Every plan has a seam that runs on the CPU: on "cpu" the streamer runs with host "device" buffers and no CUDA
streams; `model-offload` on "cpu" falls back to resident with a logged reason.
"""
from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from engine.compute_choice import compute_and_compile
from engine.errors import EngineError
from engine.lora_convert import pipe_widths
from engine.planner import (GPU, MIXED, MODEL_OFFLOAD, RESIDENT, STREAMED, VAE_TILE_PX, Bandwidths, ComputeCosts, GiB,
                            ModelSizes, Placement, Plan, PlanInputs, plan_placement, recipe_costs)
from engine.settings import EngineSettings
from engine.streamer import HostArena, _Packed
from engine.streamer_flux import apply_placement, t5_blocks

log = logging.getLogger(__name__)

# Leaner means less VRAM: each profile's next step down, for the worker's OOM retry. `streamed` keeps no
# weight on the GPU (unless [engine] vram_budget_gib says so): nothing is leaner.
_LEANER = {RESIDENT: STREAMED, MIXED: STREAMED, MODEL_OFFLOAD: STREAMED, STREAMED: None}
# Host RAM kept free when the budget is measured: the bot, CUDA's host side, transient copies.
RAM_RESERVE = int(1.5 * GiB)
# VRAM kept free when the budget is measured: allocator fragmentation.
VRAM_MARGIN = int(0.25 * GiB)
# The CUDA caching allocator's setting fluxbot asks for unless the owner set PYTORCH_CUDA_ALLOC_CONF: growable
# segments instead of fixed ones, so freed ring slots and activations do not strand "reserved but unallocated"
# memory (0.17-0.45 GiB when run 3/run 4's rows ran out of memory). torch reads the variable once, when CUDA's
# allocator starts: it must be in the environment before the first CUDA allocation of the process.
ALLOC_CONF_VAR = "PYTORCH_CUDA_ALLOC_CONF"
ALLOC_CONF = "expandable_segments:True"
# The size plans are made for: the bot's default sizes are all about one megapixel.
PLAN_SIZE = (1024, 1024)


@dataclass(frozen=True)
class Budgets:
    """What fluxbot may use on this machine (bytes), how it was found, and the copy speeds to plan with."""
    vram: int
    ram: int
    note: str
    bandwidth: Bandwidths = field(default_factory=Bandwidths)


@dataclass
class MemoryPlan:
    """What `apply_plan` did: the profile that runs (after any fallback), why, and the planner's plan."""
    profile: str
    reason: str
    device: str
    vae_tiling: bool
    plan: Plan | None = None
    streamers: list = field(default_factory=list)   # units (engine/streamer.py) owned by the plan
    undo: list = field(default_factory=list)        # callables that remove other hooks this plan installed

    def release(self) -> None:
        """Remove the plan's hooks and free its device buffers and host copies; the pipeline's weights stay
        usable (in host RAM, or back on their memory map) so that another plan can be applied."""
        for streamer in self.streamers:
            streamer.close()
        self.streamers.clear()
        for fn in self.undo:
            fn()
        self.undo.clear()


def use_expandable_segments(environ=None) -> bool:
    """Set PYTORCH_CUDA_ALLOC_CONF = expandable_segments:True when the owner has not set it (logged); True if
    set here. Call before CUDA starts (Engine.load and every engine child process do, first thing); a child
    spawned afterwards inherits it."""
    env = os.environ if environ is None else environ
    if env.get(ALLOC_CONF_VAR):
        log.info("memory: %s = %r (the owner's setting, kept)", ALLOC_CONF_VAR, env[ALLOC_CONF_VAR])
        return False
    env[ALLOC_CONF_VAR] = ALLOC_CONF
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        log.warning("memory: %s set to %s after CUDA started in this process: it applies to engine processes "
                    "started from now on", ALLOC_CONF_VAR, ALLOC_CONF)
    else:
        log.info("memory: %s = %s (fewer stranded allocator blocks; set the variable yourself to override)",
                 ALLOC_CONF_VAR, ALLOC_CONF)
    return True


def leaner(profile: str, placement: Placement | None = None) -> str | None:
    """The next profile that needs less VRAM, or None when `profile` is already the leanest. A `streamed`
    plan that keeps DiT blocks resident (within [engine] vram_budget_gib) still has a leaner one: none resident."""
    if profile not in _LEANER:
        raise ValueError(f"unknown memory profile {profile!r}; expected one of {sorted(_LEANER)}")
    if profile == STREAMED and placement is not None and GPU in placement.dit:
        return STREAMED
    return _LEANER[profile]


# ------------------------------------------------------------------------------------------------ budgets

def detect_budgets(settings: EngineSettings, device: str, *, proc: str = "/proc",
                   cgroup_root: str = "/sys/fs/cgroup") -> Budgets:
    """The budgets for `device`; EngineError naming the key when a configured budget is impossible."""
    _check_budget_values(settings)
    # 1. Host RAM: what the machine (and its cgroup) lets this process still take.
    available, machine, how = host_ram(proc=proc, cgroup_root=cgroup_root)
    if settings.ram_budget_gib > 0:
        ram = int(settings.ram_budget_gib * GiB)
        if ram > machine:
            raise EngineError(f"[engine] ram_budget_gib = {settings.ram_budget_gib:g} is larger than this machine: "
                              f"{machine / GiB:.1f} GiB ({how}); use at most that, or 0 to measure it")
        ram_note = f"RAM: [engine] ram_budget_gib = {settings.ram_budget_gib:g}"
    else:
        ram = max(0, available - RAM_RESERVE)
        ram_note = f"RAM: {available / GiB:.1f} GiB available ({how}) - {RAM_RESERVE / GiB:.1f} reserve"
    # 2. VRAM: free memory on the card (within a per-process fraction cap, if one is set).
    if not device.startswith("cuda"):
        return Budgets(vram=ram, ram=ram, note=f"{ram_note}; device {device}: weights stay in host RAM")
    free, total, cap_note = _free_vram(device)
    if settings.vram_budget_gib > 0:
        vram = int(settings.vram_budget_gib * GiB)
        if vram > total:
            raise EngineError(f"[engine] vram_budget_gib = {settings.vram_budget_gib:g} is larger than {device}: "
                              f"{total / GiB:.1f} GiB; use at most that, or 0 to measure the free VRAM")
        vram_note = f"VRAM: [engine] vram_budget_gib = {settings.vram_budget_gib:g}"
    else:
        vram = max(0, free - VRAM_MARGIN)
        vram_note = f"VRAM: {free / GiB:.2f} GiB free on {device}{cap_note} - {VRAM_MARGIN / GiB:.2f} margin"
    bandwidth = Bandwidths(h2d=measure_h2d(device), source=f"pinned->GPU measured on {device}; page cache, disk: "
                                                           f"defaults")
    return Budgets(vram=vram, ram=ram, note=f"{vram_note}; {ram_note}", bandwidth=bandwidth)


def _check_budget_values(settings: EngineSettings) -> None:
    for key in ("vram_budget_gib", "ram_budget_gib"):
        value = getattr(settings, key)
        if not isinstance(value, (int, float)) or value < 0 or value != value:
            raise EngineError(f"[engine] {key} = {value!r}: must be 0 (measure it) or a positive number of GiB")


def host_ram(*, proc: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> tuple[int, int, str]:
    """(available bytes, the machine's bytes, how it was found): MemAvailable/MemTotal, lowered by every
    cgroup limit above this process (v2 `memory.max`, v1 `memory.limit_in_bytes`)."""
    info = _meminfo(Path(proc) / "meminfo")
    available, machine = info.get("MemAvailable", 0), info.get("MemTotal", 0)
    how = f"MemAvailable {available / GiB:.1f} of {machine / GiB:.1f} GiB"
    for limit, room, where in _cgroup_limits(Path(proc) / "self" / "cgroup", Path(cgroup_root)):
        if room < available:
            available, how = room, f"cgroup {where}: limit {limit / GiB:.1f} GiB, room {room / GiB:.1f} GiB"
        machine = min(machine, limit)
    return available, machine, how


def _meminfo(path: Path) -> dict[str, int]:
    out = {}
    try:
        for line in path.read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError as e:
        log.warning("cannot read %s (%s): host RAM unknown", path, e.strerror)
    return out


def _cgroup_limits(self_cgroup: Path, root: Path):
    """(limit, room, path) for each memory-limited cgroup from this process's up to the root."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        hid, controllers, rel = (line.split(":", 2) + ["", ""])[:3]
        if hid == "0" and controllers == "":            # cgroup v2
            files = ("memory.max", "memory.current", "inactive_file", "active_file")
            base = root
        elif "memory" in controllers.split(","):         # cgroup v1
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file", "total_active_file")
            base = root / "memory"
        else:
            continue
        folder = base / rel.lstrip("/")
        while True:
            found = _cgroup_room(folder, *files)
            if found is not None:
                yield (*found, str(folder))
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent


def _cgroup_room(folder: Path, max_file: str, usage_file: str, inactive: str, active: str):
    try:
        raw = (folder / max_file).read_text().strip()
        usage = int((folder / usage_file).read_text().strip())
    except (OSError, ValueError):
        return None
    if raw == "max" or not raw.isdigit() or int(raw) >= 1 << 60:
        return None
    limit = int(raw)
    stat = {}
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            stat[key] = int(value) if value.strip().isdigit() else 0
    except OSError:
        pass
    reclaimable = stat.get(inactive, 0) + stat.get(active, 0)   # page cache the kernel takes back first
    return limit, max(0, limit - usage + reclaimable)


def _free_vram(device: str) -> tuple[int, int, str]:
    """(free bytes, card bytes, note): free on the card, within a set_per_process_memory_fraction cap."""
    dev = torch.device(device)
    if dev.index is None:                  # "cuda": the current device (torch's fraction getter needs an index)
        dev = torch.device("cuda", torch.cuda.current_device())
    free, total = torch.cuda.mem_get_info(dev)
    get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)   # newer torch only
    fraction = get_fraction(dev) if get_fraction is not None else 1.0
    if fraction < 1.0:
        capped = int(fraction * total) - torch.cuda.memory_reserved(dev)
        if capped < free:
            return max(0, capped), total, f" (capped to {fraction:.3f} of the card by this process)"
    return free, total, ""


def measure_h2d(device: str, nbytes: int = 256 * 1024 ** 2) -> float:
    """Pinned host -> device bytes/s, best of 3 copies of `nbytes` (~20 ms on PCIe 4/5)."""
    dev = torch.device(device)
    arena = HostArena(nbytes, dev)          # page-locked like the streamer's, and given back after
    src = arena.buffer
    src.fill_(1)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    best = float("inf")
    for _ in range(3):
        torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize(dev)
        best = min(best, time.perf_counter() - t0)
    arena.close()
    del src, dst
    return nbytes / best


# -------------------------------------------------------------------------------------------------- plans

def pipe_sizes(pipe) -> ModelSizes:
    """The loaded pipeline's bytes per block and model as stored now (as the streamer will lay them out)."""
    def nbytes(modules) -> int:
        return _Packed(list(modules)).nbytes if modules else 0

    dit = pipe.transformer
    doubles = tuple(nbytes([b]) for b in dit.transformer_blocks)
    singles = tuple(nbytes([b]) for b in dit.single_transformer_blocks)
    t5 = getattr(pipe, "text_encoder_2", None)
    t5_sizes = tuple(nbytes([b]) for b in t5_blocks(pipe))
    return ModelSizes(double_blocks=doubles, single_blocks=singles,
                      dit_rest=max(0, nbytes([dit]) - sum(doubles) - sum(singles)), t5_blocks=t5_sizes,
                      t5_rest=max(0, nbytes([t5]) - sum(t5_sizes)) if t5 is not None else 0,
                      clip=nbytes([pipe.text_encoder]) if getattr(pipe, "text_encoder", None) is not None else 0,
                      vae=nbytes([pipe.vae]) if getattr(pipe, "vae", None) is not None else 0,
                      source="the loaded model", lora_rank_bytes=pipe_widths(pipe).rank_bytes)


def make_plan(settings: EngineSettings, device: str, sizes: ModelSizes, budgets: Budgets,
              profile: str | None = None, *, size: tuple[int, int] = PLAN_SIZE, leanest: bool = False) -> Plan:
    """The plan for `profile` (default: `[engine] profile`) on `device` within `budgets`. `leanest`: no DiT
    block resident whatever the budgets say (the OOM retry: the budget just proved too tight)."""
    force = profile or settings.profile
    # `streamed` streams what does not fit an explicit vram_budget_gib; without one it keeps no DiT block
    # resident (the leanest plan: what it always did). An OOM retry keeps none even with one (run 4's 16/12 row
    # re-planned the same 45 resident blocks under vram_budget_gib = 11.5 and ran out again).
    cap = 0 if leanest or (force == STREAMED and settings.vram_budget_gib <= 0) else None
    inputs = PlanInputs(vram_budget=budgets.vram, ram_budget=budgets.ram, sizes=sizes, width=size[0], height=size[1],
                        steps=settings.default_steps, batch=settings.max_batch, slots=settings.stream_prefetch + 1,
                        vae_tiled=_tiles(settings, device), device=device, force=force, max_resident_dit=cap,
                        lora_rank=settings.lora_reserve_rank, lora_cache=settings.lora_cache_mib * 2**20,
                        bandwidth=budgets.bandwidth, compute=compute_costs(settings, device), budget_note=budgets.note)
    return plan_placement(inputs)


def compute_costs(settings: EngineSettings, device: str) -> ComputeCosts:
    """The planner's compute figures for the recipe the engine runs on `device` (`[engine] compute` and `compile`
    as engine/pipeline.py resolves them): the choice of resident blocks depends on how much copy time compute hides."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        # a card this machine lacks (`bot plan --vram`): fp8 only where the settings ask for it (auto cannot know)
        fp8 = settings.compute == "fp8" and settings.fp8 != "off"
        return recipe_costs("fp8" if fp8 else "bf16", bool(settings.compile))
    try:
        compute, compiled = compute_and_compile(settings, device)
    except EngineError:        # compute = "fp8" without fp8 tensor cores: the engine refuses it itself, with a message
        return ComputeCosts()
    return recipe_costs(compute, compiled)


def apply_plan(pipe, plan: Plan, device: str, settings: EngineSettings) -> MemoryPlan:
    """Place the pipeline's weights as `plan` says on `device`; returns what actually runs."""
    is_gpu = device.startswith("cuda")
    profile, reason = plan.profile, plan.summary()
    # 1. model-offload needs an accelerator (diffusers refuses otherwise): fall back on the CPU.
    if profile == MODEL_OFFLOAD and not is_gpu:
        reason = f"model-offload needs a CUDA device; {device} runs resident instead"
        log.warning("memory: %s", reason)
        profile, plan = RESIDENT, _all_on_device(plan)
    mp = MemoryPlan(profile=profile, reason=reason, device=device, vae_tiling=False, plan=plan)
    # 2. Place the weights.
    if profile == MODEL_OFFLOAD:
        pipe.enable_model_cpu_offload(device=device)
        mp.undo.append(pipe.remove_all_hooks)
    else:
        slots = plan.slots or settings.stream_prefetch + 1      # the planner lowers the ring on a tight budget
        mp.streamers.extend(apply_placement(pipe, plan.placement, device, slots=slots))
    if is_gpu:      # released: whatever the units did not put back (resident copies, the small rests) leaves the GPU
        mp.undo.append(lambda: device_tensors_to_host(pipe))
    # 3. VAE tiling as configured (never dependent on the plan: see _tiles).
    mp.vae_tiling = _tiles(settings, device)
    vae = getattr(pipe, "vae", None)
    if vae is not None and mp.vae_tiling:
        _enable_vae_tiling(vae)
    log.info("memory: %s on %s (vae tiling %s)", mp.profile, device, "on" if mp.vae_tiling else "off")
    return mp


def apply_profile(pipe, profile: str, device: str, settings: EngineSettings,
                  budgets: Budgets | None = None) -> MemoryPlan:
    """Plan `profile` for this pipeline and machine (budgets measured unless given) and apply it."""
    if profile == "auto":
        raise ValueError("apply_profile needs a concrete profile: plan `auto` with make_plan first")
    if profile not in (RESIDENT, STREAMED, MODEL_OFFLOAD):
        raise ValueError(f"unknown memory profile {profile!r}; expected resident, streamed or model-offload")
    budgets = budgets or detect_budgets(settings, device)
    return apply_plan(pipe, make_plan(settings, device, pipe_sizes(pipe), budgets, profile), device, settings)


def device_tensors_to_host(pipe) -> int:
    """Move every parameter and buffer of the pipeline's models that is not in host RAM back to it, then give
    the freed blocks back to the driver; returns the bytes moved. What a released plan leaves on the device
    (resident blocks that were not memory-mapped, embedders, norms) would otherwise stay allocated under the
    next, leaner plan."""
    moved = 0
    for model in _models(pipe):
        for module in model.modules():
            for table in (module._parameters, module._buffers):
                for name, t in table.items():
                    if t is None or t.device.type == "cpu":
                        continue
                    moved += t.numel() * t.element_size()
                    if isinstance(t, torch.nn.Parameter):
                        t.data = t.data.to("cpu")
                    else:
                        table[name] = t.to("cpu")
    free_device_cache()
    if moved:
        log.info("memory: %.2f GiB of the released plan moved back to host RAM", moved / GiB)
    return moved


def free_device_cache() -> None:
    """Collect garbage, then hand the caching allocator's free blocks back to the driver."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _models(pipe) -> list:
    names = ("transformer", "text_encoder", "text_encoder_2", "vae")
    return [m for m in (getattr(pipe, n, None) for n in names) if isinstance(m, torch.nn.Module)]


def execution_device(pipe, plan: MemoryPlan) -> torch.device:
    """The device where latents and prompt embeddings must be created for this plan."""
    if plan.profile == MODEL_OFFLOAD:
        return pipe._execution_device
    return torch.device(plan.device)


# ------------------------------------------------------------------------------------------------ helpers

def _all_on_device(plan: Plan) -> Plan:
    p = plan.placement
    n = lambda tiers: ("gpu",) * len(tiers)  # noqa: E731
    return replace(plan, profile=RESIDENT, placement=Placement(dit=n(p.dit), t5=n(p.t5), clip="gpu", vae="gpu"))


def _tiles(settings: EngineSettings, device: str) -> bool:
    """always/never as configured. auto: tiled on every GPU plan, untiled on the CPU.

    Tiling changes the pixels a little, so it must not depend on the plan (an OOM retry moves a job to a
    leaner one; /show regenerates on whatever plan runs then) nor on free VRAM at load time: the same seed,
    prompt, parameters and model give the same image on one machine whatever the memory situation. On a GPU
    the lean plans need the tiles (the untiled 1024² decode, 2.57 GiB, would be their peak), and on
    `resident` they cost ~0.1 s an image. The CPU has no such pressure."""
    if settings.vae_tiling != "auto":
        return settings.vae_tiling == "always"
    return device.startswith("cuda")


def _enable_vae_tiling(vae) -> None:
    """Tiled decode in VAE_TILE_PX tiles: FLUX's VAE config says 1024 px tiles, which never tile a 1024² image."""
    vae.enable_tiling()
    if getattr(vae, "tile_sample_min_size", 0) > VAE_TILE_PX:
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        vae.tile_sample_min_size = VAE_TILE_PX
        vae.tile_latent_min_size = VAE_TILE_PX // scale

