"""The executor of planner placements on the tiny model (CPU seam: "device" buffers on the host): every mix of
tiers gives resident's pixels, the disk tier reads a memory-mapped safetensors file without copying it into
the arena or writing it, and an OOM retry on a leaner plan keeps the job's pixels."""
from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import engine.streamer as streamer
from engine.memory import apply_plan, detect_budgets, make_plan, pipe_sizes
from engine.planner import DISK, GPU, PINNED, Placement, Plan
from engine.precision import apply_precision
from engine.settings import EngineSettings
from engine.streamer_flux import dit_blocks, t5_blocks
from engine.tiny import build_tiny_pipeline


def _image(pipe, prompt="a red cat"):
    return pipe(prompt, height=64, width=64, num_inference_steps=2, max_sequence_length=32, output_type="np",
                generator=torch.Generator("cpu").manual_seed(7)).images


def _pipe():
    pipe = build_tiny_pipeline()
    apply_precision(pipe, "all-linear")
    return pipe


def _plan(placement: Placement) -> Plan:
    return Plan(profile="mixed", placement=placement, fits=True, s_per_step=0, encode_s=0, decode_s=0, s_per_image=0,
                peak_vram=0, pinned_ram=0, host_ram=0, page_cache=0, disk_read_per_step=0, why=())


def map_from_file(modules: list[torch.nn.Module], path) -> list[torch.Tensor]:
    """Write the modules' parameters to a safetensors file and point them at read-only-in-practice memory-mapped
    views of it (MAP_PRIVATE, torch.from_file(shared=False)): what the loader hands the executor."""
    # 1. Write.
    named = {f"{i}.{n}": p.detach() for i, m in enumerate(modules) for n, p in m.named_parameters()}
    save_file({k: v.contiguous() for k, v in named.items()}, str(path))
    # 2. Map and view.
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    mapped = torch.from_file(str(path), shared=False, size=len(raw), dtype=torch.uint8)
    views = []
    for i, m in enumerate(modules):
        for n, p in m.named_parameters():
            start, end = header[f"{i}.{n}"]["data_offsets"]
            view = mapped[8 + length + start: 8 + length + end].view(p.dtype).view(p.shape)
            p.data = view
            views.append(view)
    return views


@pytest.fixture(scope="module")
def expected():
    return _image(_pipe())


@pytest.mark.parametrize("dit, t5, clip, vae", [
    ((GPU, PINNED), (PINNED, GPU), GPU, PINNED),
    ((PINNED, DISK), (DISK, DISK), DISK, DISK),
    ((DISK, GPU), (GPU, GPU), PINNED, GPU),
    ((DISK, DISK), (PINNED, DISK), PINNED, DISK),
])
def test_every_mix_of_tiers_gives_the_resident_pixels(expected, dit, t5, clip, vae):
    pipe = _pipe()
    mp = apply_plan(pipe, _plan(Placement(dit=dit, t5=t5, clip=clip, vae=vae)), "cpu", EngineSettings())
    try:
        assert (_image(pipe) == expected).all()
        assert (_image(pipe) == expected).all()           # the second image starts from the cyclic prefetch
        unit = next(u for u in mp.streamers if u.name == "dit")
        pinned = sum(unit.packed[pos].nbytes for pos in unit.order if unit.group_tier[pos] == PINNED)
        assert unit.arena.nbytes == pinned                # disk-tier blocks are never copied into the arena
        assert unit.disk_bytes == sum(unit.packed[pos].nbytes for pos in unit.order if unit.group_tier[pos] == DISK)
    finally:
        mp.release()


def test_the_text_encoders_device_buffers_are_freed_before_the_first_dit_block_even_a_resident_one(expected):
    """Run 4's 16/12 row ran out of memory in the DiT's first step: its first blocks were resident (no hook),
    so T5's ring (3 x 0.36 GiB) stayed allocated until the first streamed block, 45 resident blocks later."""
    pipe = _pipe()
    mp = apply_plan(pipe, _plan(Placement(dit=(GPU, PINNED), t5=(PINNED, PINNED), clip=PINNED, vae=PINNED)), "cpu",
                    EngineSettings())
    t5 = next(u for u in mp.streamers if u.name == "t5")
    seen: list[int] = []
    hook = dit_blocks(pipe)[0].register_forward_pre_hook(lambda m, a: seen.append(t5.device_bytes()))
    try:
        assert (_image(pipe) == expected).all()
        assert seen and set(seen) == {0}                  # T5's ring was gone when the resident block ran
    finally:
        hook.remove()
        mp.release()


def test_disk_tier_streams_from_a_memory_mapped_file_without_copying_or_writing_it(expected, tmp_path, monkeypatch):
    monkeypatch.setattr(streamer, "STAGING_CHUNK", 1000)   # many chunks per block: the chunking is exercised
    pipe = _pipe()
    path = tmp_path / "dit.safetensors"
    views = map_from_file(dit_blocks(pipe) + t5_blocks(pipe), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    ptrs = {v.data_ptr() for v in views}
    placement = Placement(dit=(DISK, DISK), t5=(DISK, DISK), clip=PINNED, vae=PINNED)
    mp = apply_plan(pipe, _plan(placement), "cpu", EngineSettings())
    dit = next(u for u in mp.streamers if u.name == "dit")
    assert dit.arena.nbytes == 0 and dit.disk_bytes > 0 and len(dit.chunks[0]) > 3
    for _ in range(2):
        assert (_image(pipe) == expected).all()
        # between uses every block points at its mapped view again: nothing of it is kept in RAM or "VRAM"
        assert {p.data_ptr() for b in dit_blocks(pipe) + t5_blocks(pipe) for p in b.parameters()} == ptrs
    assert dit.bytes_copied >= 2 * 2 * dit.disk_bytes    # 2 images x 2 steps: every block came through, every step
    mp.release()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest   # never written


def test_resident_blocks_go_back_onto_their_memory_map_when_the_plan_is_released(tmp_path):
    pipe = _pipe()
    views = map_from_file(dit_blocks(pipe), tmp_path / "dit.safetensors")
    ptrs = {v.data_ptr() for v in views}
    mp = apply_plan(pipe, _plan(Placement(dit=(GPU, PINNED), t5=(PINNED, PINNED), clip=GPU, vae=GPU)), "cpu",
                    EngineSettings())
    pinned_block = dit_blocks(pipe)[1]
    assert not {p.data_ptr() for p in pinned_block.parameters()} & ptrs   # the pinned block lives in the arena now
    mp.release()
    assert {p.data_ptr() for b in dit_blocks(pipe) for p in b.parameters()} == ptrs   # arena freed, map again


def test_an_out_of_memory_retry_on_the_leaner_plan_keeps_the_pixels(tiny_settings):
    from dataclasses import replace

    from engine.errors import EngineOutOfMemory
    from engine.pipeline import Engine
    from engine.spec import JobSpec

    engine = Engine.load(replace(tiny_settings, profile="resident"), "cpu")
    try:
        spec = JobSpec("a cat", seed=1, steps=2, width=256, height=256)
        before = np.asarray(engine.generate(spec).images[0])

        def oom(done, total):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        with pytest.raises(EngineOutOfMemory) as info:
            engine.generate(spec, progress=oom)
        assert info.value.suggested_profile == "streamed"
        engine.set_profile(info.value.suggested_profile)     # what the worker does before its one retry
        after = engine.generate(spec)
        assert after.profile == "streamed" and np.array_equal(np.asarray(after.images[0]), before)
    finally:
        engine.close()


def test_an_out_of_memory_retry_under_a_vram_budget_keeps_no_block_of_the_failed_plan_resident(tiny_settings):
    """Run 4's 16/12 row: with [engine] vram_budget_gib set, the retry on `streamed` re-planned the same resident
    blocks and ran out again. The retry must stream every DiT block (none resident: each one's weights now live in
    the new plan's host arena, not in the failed plan's resident copies) and give resident's pixels."""
    from dataclasses import replace

    from engine.errors import EngineOutOfMemory
    from engine.pipeline import Engine
    from engine.spec import JobSpec

    spec = JobSpec("a cat", seed=1, steps=2, width=256, height=256)
    engine = Engine.load(replace(tiny_settings, profile="streamed", vram_budget_gib=1.0), "cpu")
    try:
        before = np.asarray(engine.generate(spec).images[0])
        failed = engine.plan.plan.placement.dit
        assert GPU in failed                                  # the budget keeps blocks resident at first
        held = {p.data_ptr() for b, t in zip(dit_blocks(engine.pipe), failed) if t == GPU for p in b.parameters()}

        def oom(done, total):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 90.00 MiB")

        with pytest.raises(EngineOutOfMemory) as info:
            engine.generate(spec, progress=oom)
        engine.set_profile(info.value.suggested_profile)     # what the worker does before its one retry
        assert GPU not in engine.plan.plan.placement.dit
        arena = engine.plan.streamers[0].arena.buffer
        lo, hi = arena.data_ptr(), arena.data_ptr() + arena.numel()
        now = {p.data_ptr() for b in dit_blocks(engine.pipe) for p in b.parameters()}
        assert not now & held and all(lo <= ptr < hi for ptr in now)
        after = engine.generate(spec)
        assert np.array_equal(np.asarray(after.images[0]), before)
    finally:
        engine.close()


def test_a_plan_from_the_planner_runs_on_the_tiny_model(expected):
    pipe = _pipe()
    settings = EngineSettings(profile="streamed")
    plan = make_plan(settings, "cpu", pipe_sizes(pipe), detect_budgets(settings, "cpu"))
    assert plan.placement.dit == (PINNED, PINNED)         # streamed with no vram_budget_gib: nothing resident
    mp = apply_plan(pipe, plan, "cpu", settings)
    try:
        assert (_image(pipe) == expected).all()
    finally:
        mp.release()


def test_a_ram_budget_too_small_to_pin_reads_everything_from_disk_with_the_same_pixels(tiny_settings, caplog):
    from dataclasses import replace

    from engine.pipeline import Engine
    from engine.spec import JobSpec

    spec = JobSpec("a cat", seed=1, steps=2, width=256, height=256)
    resident = Engine.load(tiny_settings, "cpu")
    try:
        expected = np.asarray(resident.generate(spec).images[0])
    finally:
        resident.close()
    engine = Engine.load(replace(tiny_settings, profile="streamed", ram_budget_gib=0.01), "cpu")
    try:
        plan = engine.plan.plan
        assert set(plan.placement.dit) == {DISK} and set(plan.placement.t5) == {DISK}
        assert not plan.fits and "host RAM" in plan.problem            # a forced profile starts and says so
        assert "profile = 'streamed' does not fit the budgets on cpu (it runs anyway)" in caplog.text
        assert np.array_equal(np.asarray(engine.generate(spec).images[0]), expected)
    finally:
        engine.close()


def test_the_engine_asks_for_expandable_allocator_segments_unless_the_owner_set_the_variable():
    from engine.memory import use_expandable_segments

    env: dict[str, str] = {}
    assert use_expandable_segments(env) and env == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    owner = {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}
    assert not use_expandable_segments(owner) and owner == {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}
