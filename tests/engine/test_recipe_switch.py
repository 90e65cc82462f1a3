"""A job asking for a stored engine recipe (`JobSpec.recipe`, /show of a pruned job) is made with it where the engine
can switch to it (engine/recipe_switch.py), and the engine's own recipe runs again after it; what it cannot match
stays, and is what `recipe_differences` names. Real tiny engines on the CPU: bf16 (casting hooks) and fp8 compute
(`_scaled_mm`, which the CPU runs), and one compiled as a GPU compiles (aot_eager)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.compile import uncompile_blocks
from engine.pipeline import Engine
from engine.recipe import EngineRecipe
from engine.spec import JobSpec
from engine.streamer_flux import dit_blocks
from tests.support.compiled_engines import load_compiled

SPEC = JobSpec("a cat", seed=3, steps=2, width=256, height=256)


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0])


@pytest.fixture(scope="module")
def fp8_engine(tiny_model_dir):
    from tests.support.configs import tiny_engine_settings

    engine = Engine.load(tiny_engine_settings(tiny_model_dir.parent, compute="fp8"), "cpu")
    yield engine
    engine.close()


def test_an_fp8_engine_makes_a_bf16_job_with_bf16_pixels_then_its_own_again(fp8_engine, tiny_engine):
    bf16 = tiny_engine.recipe.to_dict()
    assert fp8_engine.recipe.compute == "fp8.row-fast" and bf16["compute"] == "bf16"
    own = fp8_engine.generate(SPEC)
    expected = _pixels(tiny_engine.generate(SPEC))
    assert not np.array_equal(_pixels(own), expected)              # fp8 compute gives other pixels
    # 1. Asked for the bf16 recipe: exactly the bf16 engine's pixels, and its record says bf16.
    remade = fp8_engine.generate(replace(SPEC, recipe=bf16))
    assert np.array_equal(_pixels(remade), expected)
    assert remade.recipe == bf16
    assert fp8_engine.recipe_differences(bf16) == []
    # 2. The next job without a recipe runs fp8 again (the switch was undone).
    again = fp8_engine.generate(SPEC)
    assert np.array_equal(_pixels(again), _pixels(own)) and again.recipe == fp8_engine.recipe.to_dict()


def test_what_the_engine_cannot_match_stays_and_is_all_it_names(fp8_engine, tiny_engine):
    stored = {**tiny_engine.recipe.to_dict(), "fp8": "diffusers-default", "torch": "2.0.0"}
    result = fp8_engine.generate(replace(SPEC, recipe=stored))
    assert result.images and result.recipe == {**stored, "fp8": "all-linear", "torch": fp8_engine.recipe.torch}
    assert np.array_equal(_pixels(result), _pixels(tiny_engine.generate(SPEC)))   # the compute it could match
    assert fp8_engine.recipe_differences(stored) == ["fp8 storage: all-linear now, diffusers-default then",
                                                     f"torch version: {fp8_engine.recipe.torch} now, 2.0.0 then"]
    # An fp8 kernel this device does not run as itself (its Triton quantiser needs CUDA) stays the engine's kernel.
    tq = {**fp8_engine.recipe.to_dict(), "compute": "fp8.row-fast-tq"}
    assert fp8_engine.recipe_differences(tq) == ["matmul compute: fp8 (row-fast) now, fp8 (row-fast-tq) then"]
    assert fp8_engine.generate(replace(SPEC, recipe=tq)).recipe["compute"] == "fp8.row-fast"


def test_an_engine_with_casting_hooks_cannot_switch_to_fp8_and_says_so(tiny_engine, fp8_engine):
    fp8 = fp8_engine.recipe.to_dict()
    assert tiny_engine.recipe_computes == ()
    assert tiny_engine.recipe_differences(fp8) == ["matmul compute: bf16 now, fp8 (row-fast) then"]
    result = tiny_engine.generate(replace(SPEC, recipe=fp8))
    assert result.recipe == tiny_engine.recipe.to_dict()
    assert np.array_equal(_pixels(result), _pixels(tiny_engine.generate(SPEC)))


def test_a_compiled_engine_runs_an_eager_fp8_job_eagerly_with_its_pixels(tiny_settings, fp8_engine):
    torch._dynamo.reset()
    engine = load_compiled(tiny_settings, "cpu")       # compute "auto" on a CPU: bf16, hook-free, compiled blocks
    try:
        blocks = dit_blocks(engine.pipe)
        compiled = [b.__dict__["forward"] for b in blocks]
        stored = fp8_engine.recipe.to_dict()           # eager fp8 (row-fast)
        assert engine.recipe_differences(stored) == []
        spec = replace(SPEC, recipe=stored)
        assert not engine.needs_warm_up(spec)           # eager blocks compile nothing
        seen: list[bool] = []
        hook = blocks[0].register_forward_pre_hook(lambda m, a: seen.append("forward" in m.__dict__))
        try:
            result = engine.generate(spec)
        finally:
            hook.remove()
        assert seen and not any(seen)                   # the class (eager) forward ran
        assert np.array_equal(_pixels(result), _pixels(fp8_engine.generate(SPEC)))
        assert result.recipe == {**stored, "compile": False}
        assert [b.__dict__["forward"] for b in blocks] == compiled   # the compiled forwards are back
        # A compiled fp8 job: the compiled blocks with fp8 Linears, a new compiled variant (a warm-up).
        compiled_fp8 = replace(SPEC, recipe={**stored, "compile": True})
        assert engine.needs_warm_up(compiled_fp8)
        result = engine.generate(compiled_fp8)
        assert result.recipe == {**stored, "compile": True}
        assert np.array_equal(_pixels(result), _pixels(fp8_engine.generate(SPEC)))
        assert engine.needs_warm_up(compiled_fp8)       # its compiled code was dropped after it (forget_compiled_code)
    finally:
        uncompile_blocks(dit_blocks(engine.pipe))
        engine.close()


def test_jobs_asking_for_other_recipes_never_share_a_batch():
    bf16 = EngineRecipe("all-linear", "bf16", False, "2.13.0", "0.42.1", "cpu x86_64").to_dict()
    fp8 = {**bf16, "compute": "fp8"}
    keys = {s.batch_key() for s in (SPEC, replace(SPEC, recipe=bf16), replace(SPEC, recipe=fp8))}
    assert len(keys) == 3
    assert replace(SPEC, recipe=dict(bf16)).batch_key() == replace(SPEC, recipe=bf16).batch_key()
    assert hash(replace(SPEC, recipe=bf16)) == hash(replace(SPEC, recipe=dict(bf16)))   # still hashable


def test_an_engine_process_answers_as_its_child_and_the_spec_carries_the_recipe_across(tiny_model_dir, fp8_engine,
                                                                                       tiny_engine):
    """The parent side of an engine process says what its child cannot match from what the child reported at load
    (`recipe_computes`), and the child makes the job with the recipe the pickled spec carries."""
    from engine.engine_process import ProcessEngine
    from tests.support.configs import tiny_engine_settings

    bf16 = tiny_engine.recipe.to_dict()
    child = ProcessEngine.start(tiny_engine_settings(tiny_model_dir.parent, compute="fp8"), "cpu")
    try:
        assert child.recipe == fp8_engine.recipe and child.recipe_computes == fp8_engine.recipe_computes
        for stored in (bf16, {**bf16, "torch": "2.0.0"}, {**bf16, "compute": "fp8.row-fast-tq"}, None):
            assert child.recipe_differences(stored) == fp8_engine.recipe_differences(stored)
        assert child.recipe_differences(bf16) == []
        result = child.generate(replace(SPEC, recipe=bf16))
        assert result.recipe == bf16
        assert np.array_equal(_pixels(result), _pixels(tiny_engine.generate(SPEC)))
    finally:
        child.close()


def test_the_kernels_a_job_may_switch_to_reuse_the_engines_own_kernel_check(fp8_engine):
    """The default kernel's Triton self-check runs once at load (`kernel_for`): its answer is passed on, not re-run."""
    from engine.fp8_compute import DEFAULT_KERNEL, FALLBACK_KERNEL
    from engine.recipe_switch import reachable_computes

    pipe = fp8_engine.pipe
    assert reachable_computes(pipe, "cpu") == fp8_engine.recipe_computes      # on the CPU the check says no
    assert f"fp8.{DEFAULT_KERNEL}" not in fp8_engine.recipe_computes
    told_yes = reachable_computes(pipe, "cpu", {DEFAULT_KERNEL: DEFAULT_KERNEL})
    assert f"fp8.{DEFAULT_KERNEL}" in told_yes
    assert reachable_computes(pipe, "cpu", {DEFAULT_KERNEL: FALLBACK_KERNEL}) == fp8_engine.recipe_computes


def test_a_compute_switch_under_compiled_blocks_compiles_afresh(tiny_settings, fp8_engine):
    """torch 2.11's dynamo does not guard on a submodule's class (an H200 run: the compiled blocks went on running
    the engine's own Linears for a switched job), so a compute switch on a compiled engine drops the compiled code
    on the way in and out: the job really runs the stored compute, and every shape then warms up again."""
    torch._dynamo.reset()
    engine = load_compiled(tiny_settings, "cpu")       # compiled bf16
    try:
        own = _pixels(engine.generate(SPEC))
        assert not engine.needs_warm_up(SPEC)
        frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        stored = {**fp8_engine.recipe.to_dict(), "compile": True}
        result = engine.generate(replace(SPEC, recipe=stored))
        assert result.recipe == stored
        assert np.array_equal(_pixels(result), _pixels(fp8_engine.generate(SPEC)))
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > frames     # compiled again for the job
        assert engine.needs_warm_up(SPEC)                # the engine's own shape compiles again too
        assert np.array_equal(_pixels(engine.generate(SPEC)), own)
    finally:
        uncompile_blocks(dit_blocks(engine.pipe))
        engine.close()
