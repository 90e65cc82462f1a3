"""[engine] lora_cache_mib: switching back to a recently used LoRA set reuses its converted files (the file is not
read again), the budget drops the least recently used first, 0 keeps the current set's files only, and the planner
counts the budget in the plan's host RAM."""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

from engine.errors import EngineError
from engine.lora_cache import LoraCache
from engine.lora_convert import load_lora
from engine.pipeline import Engine
from engine.planner import GiB, plan_placement
from engine.spec import JobSpec, LoraUse
from engine.tiny import build_tiny_pipeline
from tests.engine.test_planner import machine
from tests.support import lora_layouts

SPEC = JobSpec("a red cat", seed=3, steps=2, width=256, height=256)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def with_lora(path) -> JobSpec:
    return replace(SPEC, loras=(LoraUse(name=path.stem, strength=0.8, path=str(path)),))


def spoil_keeping_size_and_mtime(path) -> None:
    """Overwrite the file with bytes that are no safetensors file, its size and mtime as they were: the engine's
    hash (read per size and mtime) still names the old file, so only a read of the file itself can tell."""
    stat = path.stat()
    path.write_bytes(b"x" * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.fixture
def two_loras(tmp_path):
    pipe = build_tiny_pipeline()
    return (lora_layouts.write(pipe, "kohya", tmp_path / "a.safetensors"),
            lora_layouts.write(pipe, "xlabs", tmp_path / "b.safetensors"))


def test_switching_back_to_a_recent_set_does_not_read_its_file_again(tiny_settings, two_loras):
    a, b = two_loras
    engine = Engine.load(replace(tiny_settings, lora_cache_mib=1), "cpu")
    try:
        first = pixels(engine.generate(with_lora(a)))
        engine.generate(with_lora(b))                       # another set: a's converted file stays in the cache
        spoil_keeping_size_and_mtime(a)
        result = engine.generate(with_lora(a))
        assert np.array_equal(pixels(result), first)        # the kept pairs, not the (now unreadable) file
        assert result.timings["lora_switch"] > 0            # it did switch back (the pairs were built again)
    finally:
        engine.close()


def test_without_a_cache_switching_back_reads_the_file_again(tiny_engine, two_loras):
    a, b = two_loras
    assert tiny_engine.settings.lora_cache_mib == 0                  # the default
    tiny_engine.generate(with_lora(a))
    tiny_engine.generate(with_lora(b))
    spoil_keeping_size_and_mtime(a)
    with pytest.raises(EngineError, match="not a safetensors file|cannot be read as safetensors"):
        tiny_engine.generate(with_lora(a))


def test_the_budget_drops_the_least_recently_used_files_first(two_loras, tmp_path):
    pipe = build_tiny_pipeline()
    a, b = two_loras
    c = lora_layouts.write(pipe, "peft", tmp_path / "c.safetensors")
    sizes = {p: load_lora(p, pipe).nbytes for p in (a, b, c)}
    cache = LoraCache(budget=sizes[b] + sizes[c] - 1)                # room for one spare file of these
    for path in (a, b, a, c):                                         # a used again after b: b is the oldest
        cache.get(("sha", path.stem), lambda: load_lora(path, pipe))
        cache.keep([("sha", path.stem)])
    assert ("sha", "c") in cache and ("sha", "a") in cache and ("sha", "b") not in cache
    # 0: the active set's files only
    none = LoraCache(0)
    for path in (a, b):
        none.get(("sha", path.stem), lambda: load_lora(path, pipe))
        none.keep([("sha", path.stem)])
    assert len(none) == 1 and ("sha", "b") in none


def test_the_planner_counts_the_cache_in_host_ram():
    budget = 2 * GiB
    big, cached = plan_placement(machine(64, 24, lora_rank=64)), plan_placement(machine(64, 24, lora_rank=64,
                                                                                         lora_cache=budget))
    assert cached.host_ram - big.host_ram == budget
    assert "LoRA files of recent sets: 2.00 GiB of host RAM ([engine] lora_cache_mib)" in cached.describe()
    # A lean machine: the RAM the cache takes is RAM the plan no longer has for pinned blocks.
    lean, lean_cached = plan_placement(machine(16, 6, lora_rank=64)), plan_placement(machine(16, 6, lora_rank=64,
                                                                                             lora_cache=budget))
    assert lean_cached.fits and lean_cached.pinned_ram < lean.pinned_ram
    assert lean_cached.host_ram <= machine(16, 6).ram_budget
