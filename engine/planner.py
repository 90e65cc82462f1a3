"""The placement planner: where every weight of the FLUX pipeline lives, from a VRAM and a RAM budget.

Pure and deterministic: no torch, no I/O. `plan_placement(PlanInputs) -> Plan` decides, per DiT block and
per T5 block, one of three tiers, and one tier each for CLIP and the VAE:

- `gpu`: resident on the device for good;
- `pinned`: a copy in page-locked host RAM, streamed to the device through a small ring at each use;
- `disk`: left where the loader put it (a memory-mapped safetensors file: page cache, evictable), copied
  page cache → small pinned staging buffer → device at each use.

The rule: VRAM goes first to the DiT's blocks (they run every step): the whole DiT if it fits, else the mix of
resident double and single blocks (each spread over its run order) whose step `ring_step_s` models fastest: a
model of the streamer's ring, where copies run ahead of compute by at most the ring's slots. Then the VAE and
CLIP (every image), then T5 (every new prompt; the prompt cache skips it for rerolls). Pinned RAM goes in the
same order to what is not on the GPU; nothing below the DiT is pinned while a DiT block still reads from disk
(that RAM serves better as page cache for those blocks). The rest stays on disk. The prediction per step is the
ring's model: the floor the issue defines, max(compute, bytes over each path / its bandwidth), unless the ring
stalls above it; plus encode and decode.

Forced profiles keep their old meaning: `resident` (everything on the GPU), `streamed` (T5, CLIP and the VAE
never resident; DiT blocks resident only within `max_resident_dit`), `model-offload` (diffusers' whole-model
offload, costed here but placed by engine/memory.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from engine.lora_shapes import CLIP_L, FLUX_DEV_DIT, widths_from_configs

GiB = 1024 ** 3
GPU, PINNED, DISK = "gpu", "pinned", "disk"
TIERS = (GPU, PINNED, DISK)
FORCEABLE = ("auto", "resident", "streamed", "model-offload")
# What an auto plan is called in Results and logs, by what it keeps on the GPU.
RESIDENT, STREAMED, MIXED, MODEL_OFFLOAD = "resident", "streamed", "mixed", "model-offload"

# ----------------------------------------------------------------------------------- reference figures
# Working memory measured on an H100/H200 at 1024² (4096 image + 512 text tokens), batch 1: the DiT's
# activations (~0.5 GiB: resident peak 11.59 GiB with 11.08 GiB of weights; streamed 1.83 = ring 1.27 + rest
# 0.06 + activations), T5's encode (0.32 GiB besides its ring), a VAE decode (2.57 GiB untiled at 1 MPixel).
REF_TOKENS = 4096 + 512
REF_BLOCKS = (19, 38)    # FLUX.1-dev's double and single blocks: what the measured steps ran
DIT_ACTIVATIONS_REF = int(0.5 * GiB)
T5_WORKING = int(0.32 * GiB)
CLIP_WORKING = int(0.05 * GiB)
DECODE_PER_MPIXEL = int(2.4 * GiB)
# Tile edge of a tiled VAE decode (pixels). diffusers steps tiles by 3/4 of the edge: 704 px tiles cover a
# 1024² image in 2 x 2 tiles (512 px tiles would take 3 x 3, and more time); each tile ~1/2 of the full peak.
VAE_TILE_PX = 704
TEXT_TOKENS = 512
# Pinned staging for disk-tier copies: chunks of this size, this many in flight (engine/streamer.py).
STAGING_CHUNK = 32 * 1024 ** 2
STAGING_CHUNKS = 4
STAGING_BYTES = STAGING_CHUNK * STAGING_CHUNKS
# Host bytes the engine holds besides weights while it runs: prompt embeddings, images, transient copies.
HOST_WORKING = int(0.5 * GiB)
# Room every plan leaves free under the budget: the caching allocator's reserved-but-unallocated blocks, which
# grow with the budget (allocator_slack). Fitted to what the H200 runs measured when a plan ran out of memory
# under a VRAM cap, without expandable segments: 0.25 GiB at a 2.0 GiB cap (run 4, 24/2.5), 0.45 at 11.5 (run
# 4, 16/12), 0.17-0.37 at 5.5-11.5 (run 3): 0.22 GiB + 2.2% of the budget covers each (0.26 at 2, 0.47 at 11.5).
ALLOCATOR_SLACK = int(0.22 * GiB)
ALLOCATOR_SLACK_SHARE = 0.022
# The fewest ring slots a plan may lower [engine] stream_prefetch to when the leanest plan would not leave the
# slack (stream_prefetch = 1: one block computes while the next arrives).
MIN_SLOTS = 2
# What a machine of N GiB leaves to fluxbot (OS, Python, torch and CUDA's host side), and a card of N GiB
# (the CUDA context): used when a budget is given as the size of a machine (`plan --ram 16 --vram 8`).
MACHINE_RAM_RESERVE = int(2.5 * GiB)
CUDA_CONTEXT = int(0.5 * GiB)


@dataclass(frozen=True)
class ModelSizes:
    """Bytes of each part as stored (fp8 DiT Linears count 1 byte a weight)."""
    double_blocks: tuple[int, ...]
    single_blocks: tuple[int, ...]
    dit_rest: int                   # embedders, final norm: always on the device
    t5_blocks: tuple[int, ...]
    t5_rest: int                    # token embedding (looked up on the host when T5 streams) + final norm
    clip: int
    vae: int
    source: str = "measured"
    lora_rank_bytes: int = 0        # one rank of LoRA on every Linear of the DiT and CLIP, as the engine keeps it

    @property
    def dit_blocks(self) -> tuple[int, ...]:
        return self.double_blocks + self.single_blocks

    @property
    def dit(self) -> int:
        return sum(self.dit_blocks) + self.dit_rest

    @property
    def t5(self) -> int:
        return sum(self.t5_blocks) + self.t5_rest

    @property
    def total(self) -> int:
        return self.dit + self.t5 + self.clip + self.vae


@dataclass(frozen=True)
class Bandwidths:
    """Bytes per second of each path. Defaults: a PCIe 4.0 x16 consumer board, DDR4 memcpy, an NVMe SSD."""
    h2d: float = 25e9          # pinned host RAM -> device
    page_cache: float = 8e9    # page cache -> pinned staging (a CPU memcpy)
    disk: float = 2e9          # disk -> page cache
    source: str = "defaults (PCIe 4.0 x16, NVMe)"


@dataclass(frozen=True)
class ComputeCosts:
    """Seconds of DiT compute per block at 1024², batch 1 (measured on an H200, fp8 storage, bf16 compute),
    scaled to other sizes by tokens (linear layers) and tokens² (attention, 11% at 1024²)."""
    double_s: float = 0.00455
    single_s: float = 0.0035
    attention_share: float = 0.11
    t5_s: float = 0.03          # one 512-token encode, weights resident
    clip_s: float = 0.01
    decode_s: float = 0.16      # one tiled 1024² decode
    source: str = "H200 reference"

    def step(self, tokens: int, doubles: int, singles: int, batch: int = 1) -> float:
        return (doubles * self.double_s + singles * self.single_s) * self._scale(tokens) * batch

    def blocks(self, tokens: int, doubles: int, singles: int, batch: int = 1) -> list[float]:
        """Seconds of each block in run order (double blocks, then single blocks), scaled as `step` scales."""
        scale = self._scale(tokens) * batch
        return [self.double_s * scale] * doubles + [self.single_s * scale] * singles

    def _scale(self, tokens: int) -> float:
        r = tokens / REF_TOKENS
        return (1 - self.attention_share) * r + self.attention_share * r * r


# A resident DiT step (1024², batch 1) of the engine's faster recipes, (compute, compiled), measured on an H200
# (docs/bench-logs/): fp8 compiled (row-fast-tq) in fin2-fast.json, bf16 compiled in kern.json, fp8 eager in
# fast-run1.json. ComputeCosts' own figures are bf16 compute, eager. The ring's model needs the recipe's: faster
# compute hides fewer copies, so it changes which blocks should stay resident.
RECIPE_STEP_S = {("fp8", True): 0.0974, ("bf16", True): 0.1371, ("fp8", False): 0.2594}


def recipe_costs(compute: str, compiled: bool, base: ComputeCosts | None = None) -> ComputeCosts:
    """`base` (default ComputeCosts()) with the DiT's block seconds scaled so a resident step at 1024², batch 1 takes
    the recipe's RECIPE_STEP_S (bf16 eager, or a recipe not measured: `base` as it is); encode and decode as
    they are."""
    base = base or ComputeCosts()
    step = RECIPE_STEP_S.get((compute, compiled))
    if step is None:
        return base
    share = step / base.step(REF_TOKENS, *REF_BLOCKS)
    return replace(base, double_s=base.double_s * share, single_s=base.single_s * share,
                   source=f"{base.source} x {share:.2f}: {compute} compute, {'compiled' if compiled else 'eager'} "
                          f"({step} s/step resident)")


@dataclass(frozen=True)
class PlanInputs:
    vram_budget: int                 # bytes fluxbot may allocate on the device (CUDA context excluded)
    ram_budget: int                  # bytes of host RAM fluxbot may hold (after the OS/Python reserve)
    sizes: ModelSizes
    width: int = 1024
    height: int = 1024
    steps: int = 20
    batch: int = 1
    slots: int = 4                   # DiT ring slots ([engine] stream_prefetch + 1)
    vae_tiled: bool = True
    device: str = "cuda"
    force: str = "auto"
    max_resident_dit: int | None = None   # bytes of DiT blocks that may stay resident (None: what fits)
    lora_rank: int = 0               # ranks of LoRA kept room for, on the device and in RAM (lora_reserve_rank)
    lora_cache: int = 0              # host bytes for recently used LoRAs' converted files ([engine] lora_cache_mib)
    activations_ref: int = DIT_ACTIVATIONS_REF   # DiT working memory at 1024², batch 1 (scaled by tokens, batch)
    bandwidth: Bandwidths = field(default_factory=Bandwidths)
    compute: ComputeCosts = field(default_factory=ComputeCosts)
    budget_note: str = ""            # how the budgets were found (printed in the why)


@dataclass(frozen=True)
class Placement:
    """Tiers only: what the executor (engine/streamer_flux.py) applies."""
    dit: tuple[str, ...]             # one tier per DiT block, double blocks then single blocks
    t5: tuple[str, ...]              # one per T5 encoder block
    clip: str
    vae: str

    def __post_init__(self):
        for tier in (*self.dit, *self.t5, self.clip, self.vae):
            if tier not in TIERS:
                raise ValueError(f"unknown tier {tier!r}; expected one of {TIERS}")

    @property
    def all_gpu(self) -> bool:
        return all(t == GPU for t in (*self.dit, *self.t5, self.clip, self.vae))

    @property
    def nothing_resident(self) -> bool:
        return not any(t == GPU for t in (*self.dit, *self.t5, self.clip, self.vae))

    @classmethod
    def uniform(cls, sizes: ModelSizes, tier: str) -> "Placement":
        return cls(dit=(tier,) * len(sizes.dit_blocks), t5=(tier,) * len(sizes.t5_blocks), clip=tier, vae=tier)


@dataclass(frozen=True)
class Plan:
    """A placement with its predicted cost and the reasons."""
    profile: str                     # resident / streamed / mixed / model-offload
    placement: Placement
    fits: bool
    s_per_step: float
    encode_s: float                  # a new prompt (a cached one costs 0)
    decode_s: float
    s_per_image: float
    peak_vram: int
    pinned_ram: int                  # page-locked host RAM held
    host_ram: int                    # everything the engine holds in host RAM (pinned + working)
    page_cache: int                  # page cache the disk tier would like to keep (evictable)
    disk_read_per_step: int          # bytes read from the disk itself every step (page cache too small)
    why: tuple[str, ...]
    problem: str = ""                # when not `fits`: what it would need and the cheapest change
    slots: int = 0                   # DiT ring slots the executor uses (0: [engine] stream_prefetch + 1)

    def describe(self) -> str:
        return "\n".join(self.why + ((f"CANNOT FIT: {self.problem}",) if self.problem else ()))

    def summary(self) -> str:
        if self.peak_vram == 0 and self.placement.all_gpu:
            return f"{self.profile}: every weight in host RAM ({self.host_ram / GiB:.2f} GiB), on the CPU"
        p = self.placement
        n = {t: sum(1 for x in p.dit if x == t) for t in TIERS}
        return (f"{self.profile}: DiT blocks {n[GPU]} on the GPU / {n[PINNED]} pinned / {n[DISK]} disk, T5 "
                f"{_tier_word(p.t5)}, CLIP {p.clip}, VAE {p.vae}; ~{self.s_per_step:.3f} s/step, "
                f"{self.s_per_image:.1f} s/image, peak VRAM {self.peak_vram / GiB:.2f} GiB, host RAM "
                f"{self.host_ram / GiB:.1f} GiB")


# ------------------------------------------------------------------------------------------ model sizes

def flux_dev_sizes(fp8: str = "all-linear") -> ModelSizes:
    """FLUX.1-dev's bytes per part as fluxbot stores them, from its architecture (no files needed):
    DiT width 3072, 19 double + 38 single blocks; T5-XXL (24 blocks, d_model 4096, d_ff 10240), CLIP-L, the
    16-channel VAE in bf16."""
    d, mlp, head = 3072, 12288, 128

    def linear(n_in: int, n_out: int, *, bf16: bool = False) -> int:
        weight = n_in * n_out * (2 if bf16 or fp8 == "off" else 1)
        return weight + 2 * n_out                       # bias in bf16

    keep_mod = fp8 == "diffusers-default"               # norm*.linear (modulation) stays bf16 there
    double = (2 * linear(d, 6 * d, bf16=keep_mod) + 8 * linear(d, d) + 2 * (linear(d, mlp) + linear(mlp, d))
              + 4 * head * 2)
    single = (linear(d, 3 * d, bf16=keep_mod) + linear(d, mlp) + 3 * linear(d, d) + linear(d + mlp, d)
              + 2 * head * 2)
    rest = (linear(64, d) + linear(4096, d) + 3 * linear(d, d) + linear(256, d) * 2 + linear(768, d)
            + linear(d, 2 * d, bf16=keep_mod) + linear(d, 64))
    t5_block = 2 * (4 * 4096 * 4096 + 3 * 4096 * 10240 + 2 * 4096)
    t5_first = t5_block + 2 * 32 * 64                   # relative attention bias
    return ModelSizes(double_blocks=(double,) * 19, single_blocks=(single,) * 38, dit_rest=rest,
                      t5_blocks=(t5_first,) + (t5_block,) * 23, t5_rest=2 * (32128 * 4096 + 4096),
                      clip=2 * 123_060_480, vae=2 * 83_819_683, source=f"FLUX.1-dev reference sizes (fp8 {fp8})",
                      lora_rank_bytes=widths_from_configs(FLUX_DEV_DIT, CLIP_L).rank_bytes)


# ----------------------------------------------------------------------------------------- grouping

def group_runs(sizes: list[int], tiers: list[str], *, merge: bool = True) -> list[list[int]]:
    """Streamed blocks (tier not gpu) in run order, consecutive ones of one tier merged while a group stays
    within the largest block's bytes. FLUX's single blocks are 0.42x a double block: paired, they fill a ring
    slot, so the same ring holds twice as many of them and the copy engine gets further ahead during the
    (compute-bound) single blocks, a lead it then spends on the (copy-bound) double blocks."""
    streamed = [i for i, t in enumerate(tiers) if t != GPU]
    cap = max((sizes[i] for i in streamed), default=0)
    groups: list[list[int]] = []
    for i in streamed:
        last = groups[-1] if groups else None
        if (merge and last and last[-1] == i - 1 and tiers[last[-1]] == tiers[i]
                and sum(sizes[j] for j in last) + sizes[i] <= cap):
            last.append(i)
        else:
            groups.append([i])
    return groups


def spread(n: int, count: int) -> list[int]:
    """`count` of `n` positions evenly spaced over the run order (the copy engine runs ahead during them)."""
    if count <= 0:
        return []
    if count >= n:
        return list(range(n))
    return sorted({math.floor(k * n / count) for k in range(count)})


# ------------------------------------------------------------------------------------------ the ring's step

RING_STEPS = 2   # steps simulated: the first starts with an empty ring, the second is the steady state
# How much slower than planned copies may run before a tie between two modelled placements is broken: measured
# bandwidth varies from run to run, and ComputeCosts' split between double and single blocks is bf16 eager's.
COPY_MARGIN = 0.2


def ring_step_s(compute: list[float], copy: list[float], groups: list[list[int]], slots: int,
                steps: int = RING_STEPS) -> float:
    """Seconds of one denoising step in the steady state, with the streamed blocks arriving through
    engine/streamer.py's ring (pure: the streamer's rules, no torch).

    `compute[i]`: seconds of block i (run order, one compute stream); `copy[i]`: seconds of its copy to the device
    (0 for a resident block); `groups`: the streamed blocks as the streamer groups them (`group_runs`): one copy
    per group, its compute waits for it before the group's first block. The ring holds `slots` groups (at most as
    many as there are): the copy of group k starts when the copy engine is done with k - 1 and group k - slots,
    whose slot it reuses, has run; the order wraps into the next step (the streamer is cyclic). The first `slots`
    copies start with the first step (the streamer's at its first streamed block: only the first step differs,
    and it is not the one returned). Simulates `steps` steps and returns the last's
    length: with blocks all resident, the sum of compute; all streamed with slow copies, the sum of copies; a
    resident run followed by a streamed run stalls, the copy engine idle during the resident run once its few
    slots are full."""
    # 1. The ring in groups: per group, its copy seconds; per block, the group it starts or ends.
    n_groups = len(groups)
    if not n_groups:
        return sum(compute)
    group_copy = [sum(copy[i] for i in g) for g in groups]
    starts = {g[0]: k for k, g in enumerate(groups)}
    ends = {g[-1] for g in groups}
    slots = max(1, min(slots, n_groups))
    # 2. Run the steps: the compute clock; per group (numbered over the steps) when its copy and its compute end.
    clock, copier = 0.0, 0.0
    copied: list[float] = []
    ran: list[float] = []
    step_ends = [0.0]
    for step in range(steps):
        for i, seconds in enumerate(compute):
            if i in starts:
                k = step * n_groups + starts[i]
                while len(copied) <= k:          # copies in ring order, each into the slot group j - slots freed
                    j = len(copied)
                    copier = max(copier, ran[j - slots] if j >= slots else 0.0) + group_copy[j % n_groups]
                    copied.append(copier)
                clock = max(clock, copied[k])
            clock += seconds
            if i in ends:
                ran.append(clock)
        step_ends.append(clock)
    return step_ends[-1] - step_ends[-2]


# ------------------------------------------------------------------------------------------- planning

def plan_placement(inp: PlanInputs) -> Plan:
    """The placement for these budgets, its predicted cost, and why."""
    if inp.force not in FORCEABLE:
        raise ValueError(f"unknown profile {inp.force!r}; expected one of {FORCEABLE}")
    sizes = inp.sizes
    why = [f"budgets: {inp.vram_budget / GiB:.2f} GiB VRAM, {inp.ram_budget / GiB:.2f} GiB host RAM"
           + (f" ({inp.budget_note})" if inp.budget_note else "")]
    why.append(f"model: {sizes.source}: DiT {sizes.dit / GiB:.2f} GiB ({len(sizes.double_blocks)} double + "
               f"{len(sizes.single_blocks)} single blocks), T5 {sizes.t5 / GiB:.2f}, CLIP {sizes.clip / GiB:.2f}, "
               f"VAE {sizes.vae / GiB:.2f} GiB")
    if lora_reserve(inp):
        why.append(f"LoRAs: {lora_reserve(inp) / GiB:.2f} GiB kept on the device and as much in host RAM for a job's "
                   f"LoRAs (rank {inp.lora_rank} on every layer, [engine] lora_reserve_rank)")
    if inp.lora_cache:
        why.append(f"LoRA files of recent sets: {inp.lora_cache / GiB:.2f} GiB of host RAM ([engine] lora_cache_mib)")
    # 1. The CPU holds everything already (a forced profile still runs its executor there: the CPU seam).
    if not inp.device.startswith("cuda") and inp.force == "auto":
        return _finish(inp, Placement.uniform(sizes, GPU), RESIDENT, why + [f"device {inp.device} is not a GPU: "
                                                                            "weights stay in host RAM"])
    # 2. Forced profiles.
    if inp.force == "resident":
        return _finish(inp, Placement.uniform(sizes, GPU), RESIDENT, why + ["[engine] profile = resident: "
                                                                            "everything on the GPU"])
    if inp.force == "model-offload":
        return _model_offload(inp, why)
    # 3. Everything on the GPU when it fits (auto only).
    everything = Placement.uniform(sizes, GPU)
    if inp.force == "auto" and _peak_vram(inp, everything) <= _usable_vram(inp):
        return _finish(inp, everything, RESIDENT, why + [f"everything fits on the GPU "
                                                         f"({_peak_vram(inp, everything) / GiB:.2f} GiB)"])
    # 4. A ring the leanest plan can afford with the slack left, then nothing resident, then VRAM, then pinned
    #    RAM, greedily.
    inp, ring_note = _ring_for_budget(inp)
    why += ring_note
    dit = _fill_vram_dit(inp)
    rest_gpu = _fill_vram_rest(inp, dit) if inp.force == "auto" else {"vae": False, "clip": False, "t5": 0}
    tiers = _fill_ram(inp, dit, rest_gpu)
    label = STREAMED if inp.force == "streamed" else (STREAMED if tiers.nothing_resident else MIXED)
    return _finish(inp, tiers, label, why + _why_choices(inp, tiers))


def _ring_for_budget(inp: PlanInputs) -> tuple[PlanInputs, list[str]]:
    """Fewer ring slots (down to MIN_SLOTS) while the leanest plan's peak would eat into the allocator slack."""
    lean = Placement.uniform(inp.sizes, PINNED)
    slots = inp.slots
    while slots > MIN_SLOTS and _peak_vram(replace(inp, slots=slots), lean) > _usable_vram(inp):
        slots -= 1
    if slots == inp.slots:
        return inp, []
    return replace(inp, slots=slots), [f"ring of {slots} DiT blocks instead of {inp.slots} ([engine] stream_prefetch "
                                       f"= {inp.slots - 1} lowered to {slots - 1}): the leanest plan then leaves "
                                       f"{allocator_slack(inp.vram_budget) / GiB:.2f} GiB for the allocator"]


def _fill_vram_dit(inp: PlanInputs) -> list[str]:
    """DiT tiers: the whole DiT resident if it fits; else, of the placements that fit (nothing resident, and for each
    count of resident double blocks the most single blocks; each kind spread over its run order), the one with the
    fastest modelled step (`dit_step_s`: the ring's stalls counted). Ties go to the one that loses least when copies run
    COPY_MARGIN slower than planned, then to more resident bytes."""
    sizes = inp.sizes
    nd, ns = len(sizes.double_blocks), len(sizes.single_blocks)
    cap = inp.max_resident_dit
    lean = Placement.uniform(sizes, PINNED)

    def tiers_for(n_double: int, n_single: int) -> list[str]:
        out = [PINNED] * (nd + ns)
        for i in spread(nd, n_double):
            out[i] = GPU
        for i in spread(ns, n_single):
            out[nd + i] = GPU
        return out

    def ok(t: list[str]) -> bool:
        held = _sum(sizes.dit_blocks, t, GPU)
        return (cap is None or held <= cap) and _peak_vram(inp, replace(lean, dit=tuple(t))) <= _usable_vram(inp)

    # 1. The whole DiT resident frees the ring too: try it first.
    if ok(tiers_for(nd, ns)):
        return tiers_for(nd, ns)
    # 2. The candidates: per count of resident double blocks, the most single blocks that fit; and nothing resident
    #    (a resident block shifts how the streamed single blocks pair up: on a tiny card that can cost more than the
    #    copy it saves).
    candidates = [tiers_for(0, 0)] if ok(tiers_for(0, 0)) else []
    for n_double in range(nd + 1):
        n_single = next((n for n in range(ns, -1, -1) if ok(tiers_for(n_double, n))), None)
        if n_single is not None:
            candidates.append(tiers_for(n_double, n_single))
    if not candidates:
        return tiers_for(0, 0)
    # 3. The fastest modelled step; ties: the sturdier when copies are slower, then more bytes on the GPU.
    slower = replace(inp, bandwidth=replace(inp.bandwidth, h2d=inp.bandwidth.h2d / (1 + COPY_MARGIN)))
    return min(candidates, key=lambda t: (_micros(dit_step_s(inp, t)), _micros(dit_step_s(slower, t)),
                                          -_sum(sizes.dit_blocks, t, GPU)))


def _fill_vram_rest(inp: PlanInputs, dit: list[str]) -> dict:
    """After the DiT: the VAE, then CLIP, then T5's blocks, while the VRAM budget holds."""
    sizes = inp.sizes
    chosen = {"vae": False, "clip": False, "t5": 0}

    def placement(c: dict) -> Placement:
        t5 = tuple(GPU if i < c["t5"] else PINNED for i in range(len(sizes.t5_blocks)))
        return Placement(dit=tuple(dit), t5=t5, clip=GPU if c["clip"] else PINNED, vae=GPU if c["vae"] else PINNED)

    if any(t != GPU for t in dit):     # blocks still stream: the rest is better spent on them (nothing left)
        return chosen
    for key in ("vae", "clip"):
        trial = {**chosen, key: True}
        if _peak_vram(inp, placement(trial)) <= _usable_vram(inp):
            chosen = trial
    for n in range(len(sizes.t5_blocks), 0, -1):
        trial = {**chosen, "t5": n}
        if _peak_vram(inp, placement(trial)) <= _usable_vram(inp):
            chosen = trial
            break
    return chosen


def _fill_ram(inp: PlanInputs, dit: list[str], rest_gpu: dict) -> Placement:
    """Pinned RAM in order DiT (double, then single), VAE, CLIP, T5; the rest stays on disk."""
    sizes = inp.sizes
    nd = len(sizes.double_blocks)
    t5 = [GPU if i < rest_gpu["t5"] else DISK for i in range(len(sizes.t5_blocks))]
    clip = GPU if rest_gpu["clip"] else DISK
    vae = GPU if rest_gpu["vae"] else DISK
    dit = [GPU if t == GPU else DISK for t in dit]
    room = inp.ram_budget - _fixed_host(inp, Placement(tuple(dit), tuple(t5), clip, vae), assume_disk=True)
    # 1. DiT blocks: every step. Double blocks first; single blocks (compute-bound) are the ones left on disk.
    order = [i for i in range(nd) if dit[i] == DISK] + [i for i in range(nd, len(dit)) if dit[i] == DISK]
    for i in order:
        if sizes.dit_blocks[i] <= room:
            dit[i], room = PINNED, room - sizes.dit_blocks[i]
    if any(t == DISK for t in dit):     # what is left is page cache for those blocks
        return Placement(tuple(dit), tuple(t5), clip, vae)
    # 2. The VAE and CLIP: every image / every new prompt.
    if vae == DISK and sizes.vae <= room:
        vae, room = PINNED, room - sizes.vae
    if clip == DISK and sizes.clip <= room:
        clip, room = PINNED, room - sizes.clip
    # 3. T5's blocks, while RAM lasts (a lean plan reads it from disk per new prompt instead).
    for i, tier in enumerate(t5):
        if tier == DISK and sizes.t5_blocks[i] <= room:
            t5[i], room = PINNED, room - sizes.t5_blocks[i]
    return Placement(tuple(dit), tuple(t5), clip, vae)


def _model_offload(inp: PlanInputs, why: list[str]) -> Plan:
    """diffusers' model CPU offload: one whole model on the GPU at a time, all weights in pageable RAM."""
    sizes = inp.sizes
    act = _dit_activations(inp)
    peak = lora_reserve(inp) + max(sizes.dit + act, sizes.t5 + T5_WORKING, sizes.clip + CLIP_WORKING,
                                   sizes.vae + _decode_working(inp))
    compute = inp.compute.step(_tokens(inp), len(sizes.double_blocks), len(sizes.single_blocks), inp.batch)
    move = sizes.total / (inp.bandwidth.h2d / 2)            # pageable copies run at about half pinned speed
    per_image = inp.steps * compute + move + inp.compute.t5_s + inp.compute.decode_s
    host = sizes.total + HOST_WORKING + lora_reserve(inp) + inp.lora_cache
    problem = _problems(inp, peak, host, minimum_host=host)
    return Plan(profile=MODEL_OFFLOAD, placement=Placement.uniform(sizes, PINNED), fits=not problem,
                s_per_step=compute, encode_s=inp.compute.t5_s + sizes.t5 / (inp.bandwidth.h2d / 2),
                decode_s=inp.compute.decode_s, s_per_image=per_image, peak_vram=peak, pinned_ram=0, host_ram=host,
                page_cache=0, disk_read_per_step=0,
                why=tuple(why + ["[engine] profile = model-offload: one whole model at a time on the GPU; every "
                                 f"weight in pageable host RAM ({sizes.total / GiB:.1f} GiB), "
                                 f"~{sizes.total / GiB:.0f} GiB moved per image"]), problem=problem)


# ---------------------------------------------------------------------------------------- costing

def allocator_slack(vram_budget: int) -> int:
    """Bytes a plan leaves free under `vram_budget` for the caching allocator (see ALLOCATOR_SLACK)."""
    return ALLOCATOR_SLACK + int(ALLOCATOR_SLACK_SHARE * vram_budget)


def lora_reserve(inp: PlanInputs) -> int:
    """Bytes kept for a job's LoRAs: their low-rank pairs live on the device for every block, streamed or not
    (engine/lora_apply.py), and their converted copies in host RAM (engine/pipeline.py keeps the set's files)."""
    return inp.lora_rank * inp.sizes.lora_rank_bytes


def _usable_vram(inp: PlanInputs) -> int:
    """The budget less the allocator's slack: what a plan's predicted peak may reach."""
    return inp.vram_budget - allocator_slack(inp.vram_budget)


def _tokens(inp: PlanInputs) -> int:
    return (inp.width // 16) * (inp.height // 16) + TEXT_TOKENS


def _dit_activations(inp: PlanInputs) -> int:
    return int(inp.activations_ref * _tokens(inp) / REF_TOKENS * inp.batch)


def _decode_working(inp: PlanInputs) -> int:
    return decode_working(inp.width * inp.height, inp.vae_tiled)


def decode_working(pixels: int, tiled: bool) -> int:
    """Device working memory of one VAE decode of an image of `pixels` (tiled: one tile's)."""
    if tiled:
        pixels = min(pixels, VAE_TILE_PX * VAE_TILE_PX)
    return int(DECODE_PER_MPIXEL * pixels / 2 ** 20)


def _ring(sizes: list[int], tiers: list[str], slots: int) -> int:
    groups = group_runs(sizes, tiers)
    if not groups:
        return 0
    return min(slots, len(groups)) * max(sum(sizes[i] for i in g) for g in groups)


def _peak_vram(inp: PlanInputs, p: Placement) -> int:
    """Resident weights + the largest phase's transient buffers (the lease frees one phase's before the next)."""
    s = inp.sizes
    held = s.dit_rest + _sum(s.dit_blocks, p.dit, GPU) + _sum(s.t5_blocks, p.t5, GPU) + lora_reserve(inp)
    held += s.clip if p.clip == GPU else 0
    held += s.vae if p.vae == GPU else 0
    t5_all = all(t == GPU for t in p.t5)
    held += s.t5_rest if t5_all else 4096 * 2     # a streamed T5 keeps only its final norm on the device
    denoise = _ring(list(s.dit_blocks), list(p.dit), inp.slots) + _dit_activations(inp)
    encode = _ring(list(s.t5_blocks), list(p.t5), min(inp.slots, 3)) + T5_WORKING
    clip = (0 if p.clip == GPU else s.clip) + CLIP_WORKING
    decode = (0 if p.vae == GPU else s.vae) + _decode_working(inp)
    return held + max(denoise, encode, clip, decode)


def _fixed_host(inp: PlanInputs, p: Placement, *, assume_disk: bool = False) -> int:
    """Host bytes besides pinned weights: working memory, the T5 table looked up on the host, staging."""
    s = inp.sizes
    host = HOST_WORKING + lora_reserve(inp) + inp.lora_cache
    if not all(t == GPU for t in p.t5):
        host += s.t5_rest
    if assume_disk or any(t == DISK for t in (*p.dit, *p.t5, p.clip, p.vae)):
        host += STAGING_BYTES
    return host


def _finish(inp: PlanInputs, p: Placement, label: str, why: list[str]) -> Plan:
    """Predict the plan's cost and check it against the budgets."""
    s, bw, c = inp.sizes, inp.bandwidth, inp.compute
    # 1. RAM: pinned copies + fixed; the disk tier wants page cache for the DiT blocks read every step.
    pinned = (_sum(s.dit_blocks, p.dit, PINNED) + _sum(s.t5_blocks, p.t5, PINNED)
              + (s.clip if p.clip == PINNED else 0) + (s.vae if p.vae == PINNED else 0))
    host = pinned + _fixed_host(inp, p)
    dit_disk = _sum(s.dit_blocks, p.dit, DISK)
    cache_room = max(0, inp.ram_budget - host)
    cached = min(dit_disk, cache_room)
    uncached = dit_disk - cached
    # 2. Time per step: the floor (compute, or the slowest copy path), or the ring's model when it stalls more.
    compute = c.step(_tokens(inp), len(s.double_blocks), len(s.single_blocks), inp.batch)
    h2d = (_sum(s.dit_blocks, p.dit, PINNED) + dit_disk) / bw.h2d
    host_path = cached / bw.page_cache + uncached / bw.disk
    floor = max(compute, h2d, host_path)
    ring = dit_step_s(inp, p.dit, host_s_per_byte=host_path / dit_disk if dit_disk else None)
    step = ring if _micros(ring) > _micros(floor) else floor
    bound = ("compute" if step == compute else "pinned host->device copies" if step == h2d else
             "page cache/disk reads" if step == host_path else "ring")
    # 3. Encode (a new prompt) and decode.
    t5_moved = _sum(s.t5_blocks, p.t5, PINNED) + _sum(s.t5_blocks, p.t5, DISK)
    encode = max(c.t5_s, t5_moved / bw.h2d, _sum(s.t5_blocks, p.t5, DISK) / bw.disk) + _swap_s(inp, s.clip, p.clip)
    encode += c.clip_s
    decode = c.decode_s + _swap_s(inp, s.vae, p.vae)
    per_image = inp.steps * step + encode + decode
    peak = _peak_vram(inp, p)
    cpu = not inp.device.startswith("cuda")
    if cpu and p.all_gpu:                      # the CPU: every weight in host RAM, no device memory
        host, pinned = s.total + HOST_WORKING, 0
    # 4. Why, and what does not fit.
    if cpu:
        problem = _problems(inp, 0, host, minimum_host=_fixed_host(inp, p))
        return Plan(profile=label, placement=p, fits=not problem, s_per_step=0.0, encode_s=0.0, decode_s=0.0,
                    s_per_image=0.0, peak_vram=0, pinned_ram=pinned, host_ram=host, page_cache=0,
                    disk_read_per_step=0, problem=problem,
                    why=tuple(why + [f"host RAM {host / GiB:.2f} GiB; no speed prediction on the CPU (the planner's "
                                     "figures are a GPU's)"]))
    why = why + [f"predicted {step:.3f} s/step ({bound}-bound: compute {compute:.3f}, pinned->GPU {h2d:.3f}, page "
                 f"cache/disk {host_path:.3f}), encode of a new prompt {encode:.2f} s, decode {decode:.2f} s: "
                 f"{per_image:.1f} s/image at {inp.width}x{inp.height}, {inp.steps} steps (bandwidths: "
                 f"{bw.source}; compute: {c.source})",
                 f"peak VRAM {peak / GiB:.2f} GiB; host RAM {host / GiB:.2f} GiB ({pinned / GiB:.2f} pinned)"
                 + (f" + page cache for {dit_disk / GiB:.2f} GiB of DiT blocks read every step" if dit_disk else "")]
    if bound == "ring":
        why.append(f"ring-bound: its {inp.slots} slots fill while resident blocks run and the copy engine then idles; "
                   f"the streamed blocks after them wait for their copies ({step - floor:.3f} s/step over the floor "
                   f"{floor:.3f})")
    if uncached:
        why.append(f"{uncached / GiB:.2f} GiB of DiT blocks do not fit in the page cache: read from disk every "
                   f"step ({uncached / bw.disk:.2f} s/step); {(inp.ram_budget + uncached) / GiB:.1f} GiB of RAM "
                   f"would keep them cached")
    problem = _problems(inp, peak, host, minimum_host=_fixed_host(inp, p))
    return Plan(profile=label, placement=p, fits=not problem, s_per_step=step, encode_s=encode, decode_s=decode,
                s_per_image=per_image, peak_vram=peak, pinned_ram=pinned, host_ram=host, page_cache=cached,
                disk_read_per_step=uncached, why=tuple(why), problem=problem, slots=inp.slots)


def dit_step_s(inp: PlanInputs, dit, *, host_s_per_byte: float | None = None) -> float:
    """Modelled seconds of one denoising step with these DiT tiers: `ring_step_s` with ComputeCosts' seconds per
    block (at this size and batch) and each streamed block's copy: its bytes over the pinned->device bandwidth;
    a disk-tier block's the slower of that and its host path (`host_s_per_byte`; default the page cache's), which
    the copier thread's staging chunks overlap with it."""
    s = inp.sizes
    host = 1 / inp.bandwidth.page_cache if host_s_per_byte is None else host_s_per_byte
    compute = inp.compute.blocks(_tokens(inp), len(s.double_blocks), len(s.single_blocks), inp.batch)
    copy = [0.0 if t == GPU else max(b / inp.bandwidth.h2d, b * host if t == DISK else 0.0)
            for b, t in zip(s.dit_blocks, dit)]
    return ring_step_s(compute, copy, group_runs(list(s.dit_blocks), list(dit)), inp.slots)


def _micros(seconds: float) -> int:
    """Seconds to whole microseconds: two modelled steps closer than that are a tie (float noise aside)."""
    return round(seconds * 1e6)


def _swap_s(inp: PlanInputs, nbytes: int, tier: str) -> float:
    if tier == GPU:
        return 0.0
    return nbytes / inp.bandwidth.h2d + (nbytes / inp.bandwidth.disk if tier == DISK else 0.0)


def _problems(inp: PlanInputs, peak: int, host: int, *, minimum_host: int) -> str:
    """'' when the plan fits; else what it needs and the cheapest change."""
    out = []
    if peak > inp.vram_budget and inp.device.startswith("cuda"):
        change = _smaller_size(inp)
        out.append(f"it needs {peak / GiB:.2f} GiB of VRAM at {inp.width}x{inp.height} and the budget is "
                   f"{inp.vram_budget / GiB:.2f} GiB; cheapest change: "
                   + (f"a smaller size ({change} fits)" if change else "a card with more memory")
                   + (f", or [engine] stream_prefetch = 1 (a ring of 2 blocks)" if inp.slots > 2 else "")
                   + _smaller_lora_reserve(inp)
                   + (f", or [engine] profile = \"auto\"" if inp.force != "auto" else ""))
    if host > inp.ram_budget or minimum_host > inp.ram_budget:
        out.append(f"it needs {max(host, minimum_host) / GiB:.2f} GiB of host RAM and the budget is "
                   f"{inp.ram_budget / GiB:.2f} GiB; cheapest change: more RAM (or a larger [engine] ram_budget_gib)"
                   + (", or a smaller [engine] lora_cache_mib" if inp.lora_cache else "")
                   + (", or [engine] profile = \"auto\" (reads what does not fit from disk; T5 on demand)"
                      if inp.force != "auto" else ""))
    return "; ".join(out)


def _smaller_lora_reserve(inp: PlanInputs) -> str:
    """', or [engine] lora_reserve_rank = R' for the largest R (a multiple of 16, or 0) whose leanest plan fits and
    leaves the allocator its slack (with the fewest ring slots)."""
    if not lora_reserve(inp):
        return ""
    lean = Placement.uniform(inp.sizes, PINNED)
    for rank in range((inp.lora_rank - 1) // 16 * 16, -1, -16):
        if _peak_vram(replace(inp, lora_rank=rank, slots=MIN_SLOTS), lean) <= _usable_vram(inp):
            return (f", or [engine] lora_reserve_rank = {rank} (room for LoRAs of rank {rank} together)" if rank else
                    ", or [engine] lora_reserve_rank = 0 (no LoRAs)")
    return ""


def _smaller_size(inp: PlanInputs) -> str:
    """The largest square size (multiple of 64, from 256) whose leanest plan fits the VRAM budget."""
    lean = Placement.uniform(inp.sizes, PINNED)
    for edge in range(min(inp.width, inp.height) - 64, 255, -64):
        if _peak_vram(replace(inp, width=edge, height=edge), lean) <= inp.vram_budget:
            return f"{edge}x{edge}"
    return ""


def _why_choices(inp: PlanInputs, p: Placement) -> list[str]:
    s = inp.sizes
    nd = len(s.double_blocks)
    doubles = {t: sum(1 for x in p.dit[:nd] if x == t) for t in TIERS}
    singles = {t: sum(1 for x in p.dit[nd:] if x == t) for t in TIERS}
    lines = [f"DiT: {doubles[GPU]}/{nd} double and {singles[GPU]}/{len(s.single_blocks)} single blocks stay on the "
             f"GPU ({_sum(s.dit_blocks, p.dit, GPU) / GiB:.2f} GiB; of the mixes of double and single blocks that fit, "
             f"the fastest step by the ring's model); {doubles[PINNED] + singles[PINNED]} stream from pinned RAM "
             f"({_sum(s.dit_blocks, p.dit, PINNED) / GiB:.2f} GiB), {doubles[DISK] + singles[DISK]} from disk/page "
             f"cache ({_sum(s.dit_blocks, p.dit, DISK) / GiB:.2f} GiB)"]
    if inp.force == "streamed":
        lines.append("[engine] profile = streamed: T5, CLIP and the VAE stream; DiT blocks stay resident only within "
                     "[engine] vram_budget_gib")
    lines.append(f"T5: {_tier_word(p.t5)} (runs once per new prompt; the prompt cache skips it for rerolls)")
    lines.append(f"CLIP: {_tier_word((p.clip,))}; VAE: {_tier_word((p.vae,))}")
    return lines


def _tier_word(tiers: tuple[str, ...]) -> str:
    n = {t: sum(1 for x in tiers if x == t) for t in TIERS}
    if n[GPU] == len(tiers):
        return "on the GPU"
    if n[PINNED] == len(tiers):
        return "streamed from pinned RAM"
    if n[DISK] == len(tiers):
        return "on demand from disk (page cache), nothing held between uses"
    return f"{n[GPU]} blocks on the GPU, {n[PINNED]} pinned, {n[DISK]} from disk"


def _sum(sizes, tiers, tier: str) -> int:
    return sum(b for b, t in zip(sizes, tiers) if t == tier)
