"""The placement planner with FLUX.1-dev's real sizes: the issue's machines fit their budgets, the greedy's
choices, impossible plans say what they need, and the planner stays pure."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from engine.planner import (ALLOCATOR_SLACK, ALLOCATOR_SLACK_SHARE, CUDA_CONTEXT, DISK, GPU, MACHINE_RAM_RESERVE,
                            PINNED, GiB, Bandwidths, Placement, PlanInputs, dit_step_s, flux_dev_sizes,
                            group_runs, plan_placement, recipe_costs, ring_step_s, spread)

SIZES = flux_dev_sizes()
H200 = Bandwidths(h2d=52e9, source="H200")


def machine(ram_gib: float, vram_gib: float, **kw) -> PlanInputs:
    """A machine with this much RAM and a card with this much memory, as `python -m bot plan` models it."""
    return PlanInputs(vram_budget=int(vram_gib * GiB) - CUDA_CONTEXT,
                      ram_budget=int(ram_gib * GiB) - MACHINE_RAM_RESERVE, sizes=SIZES, **kw)


def test_reference_sizes_are_flux_dev_as_measured():
    # docs/benchmarks.md: the fp8 all-linear DiT is 11.08 GiB, a double block 0.32 GiB; T5-XXL bf16 8.6 GiB + table
    assert SIZES.dit / GiB == pytest.approx(11.08, abs=0.02)
    assert SIZES.double_blocks[0] / GiB == pytest.approx(0.317, abs=0.002)
    assert SIZES.single_blocks[0] / SIZES.double_blocks[0] == pytest.approx(0.42, abs=0.01)
    assert sum(SIZES.t5_blocks) / GiB == pytest.approx(8.62, abs=0.02)
    assert flux_dev_sizes("off").dit / GiB == pytest.approx(22.2, abs=0.1)


@pytest.mark.parametrize("ram, vram", [(16, 6), (16, 8), (16, 12), (32, 8), (24, 2.5), (64, 24)])
@pytest.mark.parametrize("bandwidth", [Bandwidths(), H200])
def test_the_issue_machines_get_a_plan_within_their_budgets(ram, vram, bandwidth):
    inp = machine(ram, vram, bandwidth=bandwidth)
    plan = plan_placement(inp)
    assert plan.fits and not plan.problem
    assert plan.peak_vram <= inp.vram_budget and plan.host_ram <= inp.ram_budget
    assert plan.disk_read_per_step == 0                    # the DiT never waits on the disk itself
    # every plan, the leanest too, leaves the allocator its slack (run 4's 24/2.5 streamed plan did not: OOM)
    assert plan.peak_vram <= inp.vram_budget - ALLOCATOR_SLACK - ALLOCATOR_SLACK_SHARE * inp.vram_budget
    assert len(plan.placement.dit) == 57 and len(plan.placement.t5) == 24
    assert plan.why and "predicted" in plan.describe()


def test_what_each_machine_gets():
    # 64 GiB + 24 GiB card: everything resident.
    assert plan_placement(machine(64, 24)).profile == "resident"
    # 24 GiB + 2.5 GiB card: everything streams. The 4-slot ring's 1.83 GiB ran out of memory under run 4's 2.0 GiB
    # allocator cap (1.71 allocated + 0.25 stranded): a 3-slot ring (1.51 GiB) leaves the fitted slack.
    lean = plan_placement(machine(24, 2.5))
    assert lean.slots == 3 and lean.peak_vram <= lean_room(machine(24, 2.5))
    # (at 25 GB/s one single block, 0.13 GiB, fits beside the ring and saves a copy the ring model counts: 1.64 GiB)
    assert lean.placement.dit.count(GPU) <= 1 and GPU not in lean.placement.dit[:19]
    assert plan_placement(machine(24, 2.5, bandwidth=H200)).placement.nothing_resident
    assert plan_placement(machine(24, 2.5, bandwidth=H200)).peak_vram / GiB == pytest.approx(1.51, abs=0.05)
    assert "stream_prefetch = 3 lowered to 2" in lean.describe()
    assert plan_placement(machine(24, 3.0)).slots == 4    # run 1's 3.0 GiB cap ran the 4-slot ring (1.83 GiB)
    # 16 GiB + 6 GiB card: DiT blocks on the card, the rest of the DiT pinned, T5 not all held in RAM.
    small = plan_placement(machine(16, 6))
    assert GPU in small.placement.dit and DISK not in small.placement.dit
    assert DISK in small.placement.t5
    # More VRAM never makes a plan slower or keeps fewer blocks on the card.
    gpu_blocks = [plan_placement(machine(16, v)).placement.dit.count(GPU) for v in (4, 6, 8, 12, 16)]
    assert gpu_blocks == sorted(gpu_blocks) and gpu_blocks[-1] == 57


def lean_room(inp: PlanInputs) -> float:
    """What a plan's peak may reach: the budget less the allocator's slack."""
    return inp.vram_budget - ALLOCATOR_SLACK - ALLOCATOR_SLACK_SHARE * inp.vram_budget


def test_the_allocator_slack_grows_with_the_budget_and_covers_what_the_h200_runs_stranded():
    from engine.planner import allocator_slack

    # reserved-but-unallocated when a plan ran out of memory (no expandable segments): run 4 24/2.5, 16/12
    for cap_gib, stranded_gib in [(2.0, 0.25), (11.5, 0.45)]:
        assert allocator_slack(int(cap_gib * GiB)) / GiB >= stranded_gib
    assert allocator_slack(int(2 * GiB)) < allocator_slack(int(11.5 * GiB)) < 0.05 * 24 * GiB


def test_the_executor_uses_the_ring_the_plan_chose():
    from engine.memory import apply_plan
    from engine.settings import EngineSettings
    from engine.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    tiers = Placement(dit=(PINNED, PINNED), t5=(PINNED, PINNED), clip=PINNED, vae=PINNED)
    plan = replace(plan_placement(replace(machine(24, 2.5), force="streamed")), placement=tiers, slots=1)
    mp = apply_plan(pipe, plan, "cpu", EngineSettings(stream_prefetch=3))
    try:
        assert next(u for u in mp.streamers if u.name == "dit").slots == 1
    finally:
        mp.release()


def test_the_resident_mix_is_the_fastest_the_ring_model_finds_and_each_kind_is_spread_over_the_order():
    inp = machine(32, 6)
    plan = plan_placement(inp)
    dit = plan.placement.dit
    doubles = [i for i in range(19) if dit[i] == GPU]
    singles = [i for i in range(19, 57) if dit[i] == GPU]
    # 1. A mix (8 double + 6 single blocks at 25 GB/s), spread, not bunched at the start of either kind.
    assert 0 < len(doubles) < 19 and singles
    assert max(doubles) - min(doubles) >= 12 and max(singles) - min(singles) >= 25
    assert spread(10, 4) == [0, 2, 5, 7] and spread(5, 9) == [0, 1, 2, 3, 4] and spread(5, 0) == []
    # 2. Faster than "double blocks first" (the 10 double blocks that fit), which the planner chose before.
    doubles_first = tuple(GPU if i in spread(19, 10) else PINNED for i in range(57))
    assert dit_step_s(replace(inp, slots=plan.slots), doubles_first) > plan.s_per_step > 0


# --- the ring's model of a step (ring_step_s) ------------------------------------------------------------------------

def test_the_ring_model_of_all_resident_blocks_is_their_compute():
    assert ring_step_s([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [], slots=4) == 6.0


def test_the_ring_model_of_all_streamed_blocks_with_slow_copies_is_their_copies():
    # one copy engine: 3 copies of 5 s each, compute 1 s each, a 2-slot ring: the step is the copies' 15 s
    assert ring_step_s([1.0, 1.0, 1.0], [5.0, 5.0, 5.0], [[0], [1], [2]], slots=2) == 15.0


def test_a_resident_run_followed_by_a_streamed_run_stalls_when_the_ring_is_short():
    compute, copy = [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 3.0, 3.0]   # blocks 0-1 resident, 2-3 streamed
    # Floor: max(compute 4, copies 6) = 6. One slot: block 3's copy waits until block 2 has run (its slot), and the
    # next step's block 2 copy until block 3 has: 8 s. Two slots: both copies run during the resident blocks: 6 s.
    assert ring_step_s(compute, copy, [[2], [3]], slots=1) == 8.0
    assert ring_step_s(compute, copy, [[2], [3]], slots=2) == 6.0
    # The streamer's grouping: one copy for a group, waited for before the group's first block.
    assert ring_step_s(compute, copy, [[2, 3]], slots=1) == 8.0


def test_the_ring_model_issues_copies_when_the_streamer_does():
    """The model's rule, checked on engine/streamer.py (CPU: the order of events, not their time): a copy into the
    ring is issued as soon as the group `slots` places earlier has run (its slot), the order wraps into the next
    step, and nothing is issued while resident blocks run once the ring is full."""
    import torch

    from engine.streamer import stream_blocks

    blocks = [torch.nn.Linear(4, 4) for _ in range(6)]
    unit = stream_blocks("dit", blocks, "cpu", tiers=[GPU, GPU] + [PINNED] * 4, slots=2, cyclic=True, merge=False)
    log: list[str] = []
    issue = unit._issue
    unit._issue = lambda pos, slot: (log.append(f"copy {pos}"), issue(pos, slot))[1]
    for i, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda module, args, i=i: log.append(f"run {i}"))
    try:
        for _step in range(2):
            x = torch.zeros(1, 4)
            for block in blocks:
                x = block(x)
    finally:
        unit.close()
    # groups 0-3 are blocks 2-5; a 2-slot ring: group k's copy follows the run of group k - 2
    assert log == ["run 0", "run 1", "copy 0", "copy 1", "run 2", "copy 2", "run 3", "copy 3", "run 4", "copy 0",
                   "run 5", "copy 1",
                   "run 0", "run 1", "run 2", "copy 2", "run 3", "copy 3", "run 4", "copy 0", "run 5", "copy 1"]


def test_fin2s_budgeted_plan_stalled_and_the_planner_now_picks_one_at_the_floor():
    from engine.planner import _finish

    """fin2 (docs/bench-logs/fin2-gpu1.log): fp8 compiled, resident 0.0974 s/step, pinned copies at 55.3 GB/s; the
    10 GiB budget kept all 19 double and 10 single blocks resident and measured 0.1120 (1.15x the floor)."""
    costs = recipe_costs("fp8", compiled=True)               # the engine's default recipe on an H200
    assert costs.step(4096 + 512, 19, 38) == pytest.approx(0.0974)
    inp = PlanInputs(vram_budget=10 * GiB, ram_budget=100 * GiB, sizes=SIZES, force="streamed", lora_rank=64,
                     bandwidth=Bandwidths(h2d=55.3e9), compute=costs)
    doubles_first = tuple(GPU if i < 19 or i - 19 in spread(38, 10) else PINNED for i in range(57))
    assert dit_step_s(inp, doubles_first) == pytest.approx(0.1045, abs=0.0005)    # stalls: 1.07x the floor
    plan = plan_placement(inp)
    dit = plan.placement.dit
    assert plan.slots == 4 and 0 < dit[:19].count(GPU) < 19   # some double blocks stream now, more single blocks stay
    assert dit[19:].count(GPU) > 10 and plan.fits
    assert plan.s_per_step == pytest.approx(0.0974, rel=1e-6) and "compute-bound" in plan.describe()
    # The old placement's prediction is the ring's, and says why it is above the floor.
    old = _finish(inp, replace(plan.placement, dit=doubles_first), "streamed", [])
    assert old.s_per_step == dit_step_s(inp, doubles_first) and "ring-bound: its 4 slots fill" in old.describe()


def test_short_ram_reads_single_blocks_from_disk_and_t5_on_demand():
    plan = plan_placement(machine(10, 6))
    dit = plan.placement.dit
    on_disk = [i for i, t in enumerate(dit) if t == DISK]
    assert on_disk and min(on_disk) >= 19                  # double blocks keep pinned RAM, single blocks go to disk
    assert set(plan.placement.t5) == {DISK} and plan.placement.clip == DISK
    assert plan.host_ram <= machine(10, 6).ram_budget


def test_ram_too_small_for_the_page_cache_says_what_it_costs_and_what_would_help():
    plan = plan_placement(machine(6, 6, bandwidth=H200))
    assert plan.disk_read_per_step > 0
    assert "read from disk every step" in plan.describe() and "GiB of RAM would keep them cached" in plan.describe()


def test_an_impossible_plan_says_what_it_needs_and_the_cheapest_change():
    plan = plan_placement(machine(16, 1.75))           # even a ring of 2 blocks (1.35 GiB) is too much
    assert not plan.fits and plan.slots == 2
    assert "needs 1.3" in plan.problem and "budget is 1.25 GiB" in plan.problem
    assert "a smaller size (" in plan.problem and "fits)" in plan.problem
    assert "CANNOT FIT" in plan.describe()
    forced = plan_placement(replace(machine(16, 8), force="resident"))
    assert not forced.fits and 'profile = "auto"' in forced.problem
    offload = plan_placement(replace(machine(16, 12), force="model-offload"))
    assert not offload.fits and "host RAM" in offload.problem and "more RAM" in offload.problem


def test_forced_profiles_keep_their_meaning():
    streamed = plan_placement(replace(machine(64, 24), force="streamed", max_resident_dit=0))
    assert streamed.profile == "streamed" and streamed.placement.nothing_resident
    budgeted = plan_placement(replace(machine(64, 24), force="streamed", max_resident_dit=4 * GiB))
    held = sum(b for b, t in zip(SIZES.dit_blocks, budgeted.placement.dit) if t == GPU)
    assert 3 * GiB < held <= 4 * GiB and set(budgeted.placement.t5) == {PINNED}
    resident = plan_placement(replace(machine(64, 80), force="resident"))
    assert resident.placement.all_gpu and resident.fits
    with pytest.raises(ValueError, match="unknown profile"):
        plan_placement(replace(machine(64, 24), force="fast"))


def test_the_cpu_runs_resident_and_plans_are_deterministic():
    assert plan_placement(replace(machine(16, 0), device="cpu")).profile == "resident"
    assert plan_placement(machine(16, 8)) == plan_placement(machine(16, 8))


def test_bigger_images_need_more_vram():
    small, big = plan_placement(machine(24, 2.5, width=512, height=512)), plan_placement(machine(24, 2.5, width=2048,
                                                                                               height=2048))
    assert small.peak_vram < big.peak_vram


def test_groups_never_mix_tiers_and_pair_single_blocks():
    sizes = [10, 4, 4, 4, 4, 10]
    assert group_runs(sizes, [PINNED] * 6) == [[0], [1, 2], [3, 4], [5]]
    assert group_runs(sizes, [PINNED, PINNED, DISK, DISK, GPU, PINNED]) == [[0], [1], [2, 3], [5]]


def test_placement_rejects_unknown_tiers():
    with pytest.raises(ValueError, match="unknown tier"):
        Placement(dit=("ssd",), t5=(), clip=GPU, vae=GPU)


def test_the_planner_imports_without_torch():
    code = "import sys, engine.planner; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- the room kept for LoRAs ([engine] lora_reserve_rank) ------------------------------------------------------------

def test_one_rank_of_lora_is_what_flux_dev_s_real_linears_take_in_bf16():
    """The reserve's unit: a bf16 down row and up column on every Linear of FLUX.1-dev's DiT and CLIP-L, counted
    on the real modules (built on the meta device); rank 64 is the ~0.67 GiB docs/engine.md names."""
    import torch
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.lora_shapes import CLIP_L, FLUX_DEV_DIT

    with torch.device("meta"):
        models = [FluxTransformer2DModel.from_config(FLUX_DEV_DIT),
                  CLIPTextModel(CLIPTextConfig(**CLIP_L, num_attention_heads=12))]
    counted = sum(2 * (m.in_features + m.out_features) for model in models for m in model.modules()
                  if isinstance(m, torch.nn.Linear))
    assert SIZES.lora_rank_bytes == counted
    assert 64 * SIZES.lora_rank_bytes / GiB == pytest.approx(0.666, abs=0.001)


def test_a_6_gib_card_keeps_room_for_rank_64_loras_on_the_gpu_and_in_ram():
    without, inp = plan_placement(machine(16, 6)), machine(16, 6, lora_rank=64)
    plan = plan_placement(inp)
    reserve = 64 * SIZES.lora_rank_bytes
    gpu_blocks = [sum(1 for t in p.placement.dit if t == GPU) for p in (without, plan)]
    # 1. Five single blocks (0.66 GiB) leave the GPU for the reserve: 8 double + 6 single -> 8 + 1, and it still fits.
    assert gpu_blocks == [14, 9] and plan.fits
    assert plan.peak_vram <= inp.vram_budget - ALLOCATOR_SLACK - ALLOCATOR_SLACK_SHARE * inp.vram_budget
    # 2. The reserve is counted in the peak: the resident part grew by it while the blocks shrank by two.
    dit_gpu = [sum(b for b, t in zip(SIZES.dit_blocks, p.placement.dit) if t == GPU) for p in (without, plan)]
    assert plan.peak_vram - without.peak_vram == pytest.approx(reserve - (dit_gpu[0] - dit_gpu[1]), abs=2 ** 20)
    assert "LoRAs: 0.67 GiB kept on the device and as much in host RAM" in plan.describe()
    # 3. Resident on a large card: the peak grows by exactly the reserve, and host RAM too (the converted set).
    big, big_lora = plan_placement(machine(64, 24)), plan_placement(machine(64, 24, lora_rank=64))
    assert big_lora.peak_vram - big.peak_vram == reserve and big_lora.host_ram - big.host_ram == reserve


def test_a_card_too_small_for_the_reserve_is_told_which_reserve_fits():
    plan = plan_placement(machine(24, 2.5, lora_rank=64))
    assert not plan.fits and "[engine] lora_reserve_rank = 32" in plan.problem
    inp = machine(24, 2.5, lora_rank=32)
    smaller = plan_placement(inp)
    assert smaller.fits and smaller.slots == 2
    assert smaller.peak_vram <= inp.vram_budget - ALLOCATOR_SLACK - ALLOCATOR_SLACK_SHARE * inp.vram_budget
