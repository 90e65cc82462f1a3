"""The bf16 working copy of the DiT's fp8 Linears (engine/bf16_copy.py, `[engine] bf16_copy`): the same numbers as the
per-step upcast (the same pixels eager; compiled on a GPU they differ slightly, so the recipe names it: compute
"bf16.copy", and /show of a "bf16" job on an engine with a copy runs the upcast), kept only where the room rule holds, dropped on a re-plan, and dropped for good (with the job retried
on the same profile) after an out-of-memory error. Real tiny engines on the CPU, compiled as a GPU compiles them
(aot_eager, hook-free Linears); the GPU's memory query (`Engine._vram_room`) is the one part stood in for."""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from bot.config import ConfigError, load_config
from engine.bf16_copy import COPY_MARGIN, CopiedUpcastLinear, add_copy, copy_bytes, copy_room, copyable_linears, remove_copy
from engine.errors import EngineOutOfMemory
from engine.fp8_compute import Fp8Linear, UpcastLinear
from engine.pipeline import Engine
from engine.recipe import compute_name
from engine.spec import JobSpec
from tests.conftest import with_settings
from tests.support.compiled_engines import load_compiled

GiB = 1024 ** 3
SPEC = JobSpec("a lighthouse in a storm", seed=11, steps=2, width=256, height=256)
PLENTY = dict(budget_room=100 * GiB, device_free=100 * GiB)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0])


def copies(engine) -> int:
    return sum(isinstance(m, CopiedUpcastLinear) for m in engine.pipe.transformer.modules())


@pytest.fixture
def gpu_memory(monkeypatch):
    """Stand in for the GPU's memory figures: `gpu_memory(room)` makes every engine see that room."""
    def set_room(figures: dict[str, int]) -> None:
        monkeypatch.setattr(Engine, "_vram_room", lambda self: dict(figures))
    return set_room


@pytest.fixture(scope="module")
def plain(tiny_model_dir):
    """The compiled bf16 engine without a copy: the pixels a copy must reproduce."""
    from tests.support.configs import tiny_engine_settings

    engine = load_compiled(tiny_engine_settings(tiny_model_dir.parent, compute="bf16", bf16_copy=False))
    yield engine
    engine.close()


@pytest.fixture
def copied(tiny_settings, gpu_memory, caplog):
    gpu_memory(PLENTY)
    with caplog.at_level(logging.INFO, logger="engine.pipeline"):
        engine = load_compiled(with_settings(tiny_settings, compute="bf16"))
    yield engine
    engine.close()


def test_a_copied_linear_computes_exactly_what_the_upcast_computes():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32).to(torch.float8_e4m3fn)
    linear.__class__ = UpcastLinear
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    before = linear(x)
    assert add_copy([linear]) == copy_bytes([linear]) == 2 * (64 * 32 + 32)
    assert isinstance(linear, CopiedUpcastLinear) and linear.bf16_weight.dtype == torch.bfloat16
    assert torch.equal(linear(x), before)
    assert linear.weight.dtype == torch.float8_e4m3fn        # the stored weights stay fp8
    assert remove_copy(linear) == 2 * (64 * 32 + 32)
    assert type(linear) is UpcastLinear and "bf16_weight" not in vars(linear)
    assert torch.equal(linear(x), before)


def test_the_engine_keeps_a_copy_where_there_is_room_and_makes_the_same_pixels(copied, plain, caplog):
    assert copied.bf16_copy_bytes > 0 and copies(copied) == len(copyable_linears(plain.pipe.transformer))
    loaded = "\n".join(r.getMessage() for r in caplog.get_records("setup"))
    assert "bf16 working copy of the DiT: 30 Linears" in loaded and "recipe compute bf16.copy" in loaded
    got, expected = copied.generate(SPEC), plain.generate(SPEC)
    assert np.array_equal(pixels(got), pixels(expected))      # aot_eager, like eager: the same numbers
    assert copied.recipe.compute == got.recipe["compute"] == "bf16.copy"
    assert got.recipe == {**expected.recipe, "compute": "bf16.copy"}


def test_show_makes_each_recipe_with_the_path_it_names(copied, plain):
    """A stored "bf16" job on an engine with a copy runs the per-step upcast (no difference to report), then the copy
    again; an engine without a copy names the difference for a job made with one."""
    upcast = plain.generate(SPEC).recipe
    assert copied.recipe_differences(upcast) == []
    remade = copied.generate(replace(SPEC, recipe=upcast))
    assert remade.recipe == upcast and np.array_equal(pixels(remade), pixels(plain.generate(SPEC)))
    assert copies(copied) > 0 and copied.generate(SPEC).recipe["compute"] == "bf16.copy"
    made_with_copy = copied.recipe.to_dict()
    assert plain.recipe_differences(made_with_copy) == ["matmul compute: bf16 now, bf16 (working copy) then"]


def test_no_copy_without_room_and_the_log_says_what_it_would_need(tiny_settings, gpu_memory, caplog):
    gpu_memory(dict(budget_room=COPY_MARGIN, device_free=100 * GiB))
    with caplog.at_level(logging.INFO, logger="engine.pipeline"):
        engine = load_compiled(with_settings(tiny_settings, compute="bf16"))
    try:
        assert engine.bf16_copy_bytes == 0 and copies(engine) == 0
        assert "not kept (needs" in caplog.text and "the VRAM budget leaves 0.00 GiB" in caplog.text
    finally:
        engine.close()


def test_the_setting_off_or_an_eager_engine_keeps_none(tiny_settings, tiny_engine, gpu_memory):
    gpu_memory(PLENTY)
    assert tiny_engine.bf16_copy_bytes == 0           # eager: diffusers' casting hooks, no hook-free Linear
    engine = load_compiled(with_settings(tiny_settings, compute="bf16", bf16_copy=False))
    try:
        assert engine.bf16_copy_bytes == 0 and copies(engine) == 0
    finally:
        engine.close()


def test_a_replan_drops_the_copy_and_keeps_it_again(copied):
    first = pixels(copied.generate(SPEC))
    copied.set_profile("streamed")
    assert copied.bf16_copy_bytes == 0 and copies(copied) == 0      # streamed blocks: no copy
    assert np.array_equal(pixels(copied.generate(SPEC)), first)
    copied.set_profile("resident")
    assert copied.bf16_copy_bytes > 0
    copied.close()
    assert copied.bf16_copy_bytes == 0


def test_out_of_memory_with_a_copy_drops_it_and_retries_on_the_same_profile(copied, plain, caplog):
    def oom(done, total):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    copied.generate(SPEC)
    assert not copied.needs_warm_up(SPEC)                     # this shape is compiled
    with pytest.raises(EngineOutOfMemory) as info:
        copied.generate(SPEC, progress=oom)
    err = info.value
    assert err.profile == "resident" and err.suggested_profile == "resident"
    assert "bf16 working copy" in str(err) and "[engine] bf16_copy" in str(err)
    assert copied.bf16_copy_bytes == 0 and copies(copied) == 0   # dropped at once, as the message says
    assert copied.needs_warm_up(SPEC)                         # the Linears changed class: compiles again
    copied.set_profile(err.suggested_profile)                 # what the worker's retry does
    assert copied.profile == "resident" and copied.bf16_copy_bytes == 0 and copies(copied) == 0
    assert copied.recipe.compute == "bf16" and "bf16.copy" not in copied.recipe_computes
    assert np.array_equal(pixels(copied.generate(SPEC)), pixels(plain.generate(SPEC)))
    copied.set_profile("resident")                            # and it stays without one
    assert copied.bf16_copy_bytes == 0


def test_a_job_made_with_another_compute_puts_the_copy_back_after(copied, plain):
    fp8 = {**copied.recipe.to_dict(), "compute": compute_name("fp8", "row-fast")}
    other = copied.generate(replace(SPEC, recipe=fp8))
    assert other.recipe["compute"] == fp8["compute"]
    assert not np.array_equal(pixels(other), pixels(plain.generate(SPEC)))
    assert copies(copied) > 0 and not any(type(m) is Fp8Linear for m in copied.pipe.transformer.modules())
    assert np.array_equal(pixels(copied.generate(SPEC)), pixels(plain.generate(SPEC)))


def test_a_copy_that_fails_midway_leaves_no_copy_behind():
    torch.manual_seed(0)
    made = [torch.nn.Linear(32, 16).to(torch.float8_e4m3fn) for _ in range(3)]
    for m in made:
        m.__class__ = UpcastLinear
    del made[1].weight                                        # its copy fails (as an allocation would midway)
    with pytest.raises(AttributeError):
        add_copy(made)
    assert all(type(m) is UpcastLinear and "bf16_weight" not in vars(m) for m in made)


def test_the_room_rule():
    assert copy_room(GiB, budget_room=GiB + COPY_MARGIN, device_free=50 * GiB).fits
    short = copy_room(GiB, budget_room=50 * GiB, device_free=GiB)
    assert not short.fits and "the free device memory leaves 0.00 GiB" in short.why


def test_the_config_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[engine]\nbf16_copy = false\n")
    assert load_config(path, env={}).engine.bf16_copy is False
    path.write_text('[engine]\nbf16_copy = "no"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert "[engine] bf16_copy = 'no': must be true or false" in str(e.value)
