"""Regional compilation ([engine] compile) with the streamer's hooks: every placement plan runs each DiT block as
one graph (fullgraph: a graph break would raise), repeated blocks share their graph, the pixels are eager's, the
engine says "warming up" while a new shape compiles, and inductor's cache goes under models_dir.

The CPU tests compile with dynamo + AOTAutograd ("aot_eager"): the same tracing and graph capture as on the GPU,
without inductor's C++ build (2+ minutes for the tiny model on 2 cores). Inductor itself runs on the GPU
(bench/engine_bench.py)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from engine.compile import CACHE_ENV, compile_blocks, compile_wanted, uncompile_blocks, use_disk_cache
from engine.memory import apply_plan
from engine.planner import DISK, GPU, PINNED, Placement, Plan
from engine.precision import apply_precision
from engine.settings import EngineSettings
from engine.spec import JobSpec
from engine.streamer_flux import dit_blocks
from engine.tiny import build_tiny_pipeline
from tests.conftest import with_settings
from tests.support.compiled_engines import COMPILED_LOADER, load_compiled


def _image(pipe):
    return pipe("a red cat", height=64, width=64, num_inference_steps=2, max_sequence_length=32, output_type="np",
                generator=torch.Generator("cpu").manual_seed(7)).images


def _plan(dit: tuple[str, ...]) -> Plan:
    return Plan(profile="mixed", placement=Placement(dit=dit, t5=(GPU, GPU), clip=GPU, vae=GPU), fits=True,
                s_per_step=0, encode_s=0, decode_s=0, s_per_image=0, peak_vram=0, pinned_ram=0, host_ram=0,
                page_cache=0, disk_read_per_step=0, why=())


@pytest.fixture(scope="module")
def eager_pixels():
    pipe = build_tiny_pipeline()
    apply_precision(pipe, "all-linear", "fp8", hooks=False)
    return _image(pipe)


@pytest.mark.parametrize("dit", [(GPU, GPU), (PINNED, PINNED), (GPU, PINNED), (DISK, PINNED)],
                         ids=["resident", "streamed", "budgeted", "disk+pinned"])
def test_compiled_blocks_run_on_every_plan_as_one_graph_each_with_eager_pixels(eager_pixels, dit):
    torch._dynamo.reset()
    counters.clear()
    pipe = build_tiny_pipeline()
    apply_precision(pipe, "all-linear", "fp8", hooks=False)
    mp = apply_plan(pipe, _plan(dit), "cpu", EngineSettings())
    try:
        assert compile_blocks(dit_blocks(pipe), backend="aot_eager") == 2
        assert compile_blocks(dit_blocks(pipe), backend="aot_eager") == 0     # idempotent
        first, second = _image(pipe), _image(pipe)
        assert np.array_equal(first, eager_pixels) and np.array_equal(second, eager_pixels)
        assert not counters["graph_break"]                   # the hooks stay outside the graphs
        assert counters["stats"]["unique_graphs"] == 2       # one per block kind, reused every step
    finally:
        uncompile_blocks(dit_blocks(pipe))
        for unit in mp.streamers:
            unit.close()


def test_repeated_blocks_share_one_graph_per_kind():
    """Four double and four single blocks compile to three graphs, not eight: one for the double blocks, two for
    the single blocks (the first one's input is a strided view of the double blocks' output, so its strides differ
    from the others'; every further block reuses a graph)."""
    from diffusers import FluxTransformer2DModel

    torch._dynamo.reset()
    counters.clear()
    dit = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=4, num_single_layers=4,
                                 attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                 pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6)).eval()
    pipe = type("P", (), {"transformer": dit})()
    dit.to(torch.bfloat16)
    apply_precision(pipe, "all-linear", "fp8", hooks=False)
    blocks = dit_blocks(pipe)
    gen = torch.Generator("cpu").manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 16, generator=gen).bfloat16(),
                  encoder_hidden_states=torch.randn(1, 8, 32, generator=gen).bfloat16(),
                  pooled_projections=torch.randn(1, 32, generator=gen).bfloat16(), timestep=torch.tensor([0.5]),
                  img_ids=torch.rand(16, 3), txt_ids=torch.zeros(8, 3), guidance=torch.tensor([3.5]),
                  return_dict=False)
    with torch.inference_mode():
        eager = dit(**inputs)[0]
        compile_blocks(blocks, backend="aot_eager")
        compiled = dit(**inputs)[0]
    assert torch.equal(eager, compiled)
    assert not counters["graph_break"]
    assert counters["stats"]["unique_graphs"] == 3           # 8 blocks, 3 graphs


@pytest.fixture
def compiled_engine(tiny_settings):
    """A tiny Engine loaded the way a GPU loads it with [engine] compile = true (hook-free fp8 Linears, blocks
    compiled at load), compiled with "aot_eager" because this is the CPU (tests/support/compiled_engines.py)."""
    torch._dynamo.reset()
    engine = load_compiled(tiny_settings, "cpu")
    yield engine
    uncompile_blocks(dit_blocks(engine.pipe))
    engine.close()


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0])


def test_a_compiled_engine_gives_eager_pixels_with_and_without_loras(compiled_engine, tiny_settings):
    """LoRAs add forward hooks to the blocks' Linears; a graph traced without them must not run with them (dynamo
    skips hook guards by default: the second LoRA job here got the plain image before compile.py turned them on)."""
    from engine.pipeline import Engine
    from engine.spec import LoraUse

    assert compiled_engine.recipe.compile and all("forward" in b.__dict__ for b in dit_blocks(compiled_engine.pipe))
    eager = Engine.load(with_settings(tiny_settings, compile=False), "cpu")
    try:
        assert not eager.recipe.compile
        lora = JobSpec("a cat", seed=4, steps=2, width=256, height=256, loras=(LoraUse("tiny-random-demo", 0.8),))
        plain = JobSpec("a cat", seed=4, steps=2, width=256, height=256)
        expected = {"lora": _pixels(eager.generate(lora)), "plain": _pixels(eager.generate(plain))}
        assert not np.array_equal(expected["lora"], expected["plain"])
        for name, spec in (("lora", lora), ("plain", plain), ("lora", lora), ("plain", plain)):
            result = compiled_engine.generate(spec)
            assert np.array_equal(_pixels(result), expected[name]), name
            assert result.recipe["compile"] is True
    finally:
        eager.close()


def test_the_engine_says_warming_up_during_the_first_step_of_each_new_shape(compiled_engine):
    engine = compiled_engine
    flags: list[bool] = []
    original = engine.pipe.transformer.forward

    def spy(*args, **kwargs):      # what a waiting user would see while the DiT runs
        flags.append(engine.warming_up)
        return original(*args, **kwargs)

    engine.pipe.transformer.forward = spy
    try:
        spec = JobSpec("a dog", seed=2, steps=3, width=256, height=256)
        assert engine.needs_warm_up(spec)
        engine.generate(spec)
        assert not engine.needs_warm_up(spec) and not engine.warming_up
        engine.generate(spec)
        assert engine.needs_warm_up(JobSpec("a dog", seed=2, steps=3, width=512, height=256))   # another size
        assert engine.needs_warm_up(spec, batch=2)                                              # another batch
    finally:
        del engine.pipe.transformer.forward
    assert flags == [True, False, False, False, False, False]


def test_compile_is_for_gpus_and_its_cache_goes_under_models_dir(tmp_path, monkeypatch):
    assert not compile_wanted(True, "cpu") and not compile_wanted(False, "cuda:0")
    assert compile_wanted(True, "cuda:0")
    monkeypatch.delenv(CACHE_ENV, raising=False)
    path = use_disk_cache(tmp_path / "models")
    assert path == (tmp_path / "models" / ".fluxbot-cache" / "inductor").resolve() and path.is_dir()
    assert os.environ[CACHE_ENV] == str(path)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))    # the owner's choice wins
    assert use_disk_cache(tmp_path / "models") == tmp_path / "mine"


def test_an_engine_process_says_warming_up_until_its_child_has_compiled_the_shape(tiny_settings):
    """Multi-GPU engines live in child processes: the parent tracks the compiled shapes from the child's recipe
    and reports "warming up" from the request to the first step's progress."""
    from engine.engine_process import ProcessEngine

    engine = ProcessEngine.start(tiny_settings, "cpu", loader=COMPILED_LOADER)
    try:
        assert engine.recipe.compile and engine.recipe_differences(engine.recipe.to_dict()) == []
        seen: list[bool] = []
        spec = JobSpec("a fox", seed=3, steps=2, width=256, height=256)
        assert engine.needs_warm_up(spec)
        engine.generate(spec, should_cancel=lambda: seen.append(engine.warming_up) or False,
                        progress=lambda done, total: seen.append(engine.warming_up))
        assert seen[0] is True and seen[-1] is False and not engine.needs_warm_up(spec)
        seen.clear()
        engine.generate(spec, should_cancel=lambda: seen.append(engine.warming_up) or False)
        assert seen and not any(seen)
        assert engine.recipe_differences(None) == ["no engine recipe was recorded with the image"]
    finally:
        engine.close()


def test_recompiling_after_a_compute_change_runs_the_new_compute():
    """Blocks compiled with bf16 compute, uncompiled, switched to fp8 compute and compiled again give fp8's eager
    pixels, not the bf16 graph's (dynamo caches graphs on the shared forward code; a stale one ran bf16 matmuls in
    the fast bench's fp8 rows until `uncompile_blocks` dropped them)."""
    from engine.fp8_compute import Fp8Linear, UpcastLinear, swap_linears

    pipe = build_tiny_pipeline()
    apply_precision(pipe, "all-linear", "bf16", hooks=False)
    linears = [m for m in pipe.transformer.modules() if isinstance(m, (UpcastLinear, Fp8Linear))]
    bf16_eager = _image(pipe)
    swap_linears(linears, "fp8")
    fp8_eager = _image(pipe)
    assert not np.array_equal(bf16_eager, fp8_eager)
    swap_linears(linears, "bf16")
    try:
        compile_blocks(dit_blocks(pipe), backend="aot_eager")
        assert np.array_equal(_image(pipe), bf16_eager)
        uncompile_blocks(dit_blocks(pipe))
        swap_linears(linears, "fp8")
        compile_blocks(dit_blocks(pipe), backend="aot_eager")
        assert np.array_equal(_image(pipe), fp8_eager)
    finally:
        uncompile_blocks(dit_blocks(pipe))
