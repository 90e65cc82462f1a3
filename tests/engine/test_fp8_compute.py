"""fp8 compute ([engine] compute): the recipe's numerics on the CPU (torch's CPU `_scaled_mm` runs the same
call the GPU does), one copy of the fp8 weights, deterministic pixels, and bf16 compute without hooks equal to
diffusers' layerwise casting (the form torch.compile traces)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.fp8_compute import (FALLBACK_KERNEL, FP8, FP8_KERNELS, Fp8Linear, UpcastLinear, fp8_linear, fp8_linear_reference, quantize_rows,
                                resolve_compute, swap_linears)
from engine.pipeline import Engine
from engine.precision import apply_precision, dit_bytes, linear_dtypes
from engine.spec import JobSpec
from engine.tiny import build_tiny_pipeline
from tests.conftest import with_settings


def _dit_inputs(dit, seed=0):
    cfg = dit.config
    gen = torch.Generator("cpu").manual_seed(seed)
    bf = dict(dtype=torch.bfloat16)
    return dict(hidden_states=torch.randn(1, 64, cfg.in_channels, generator=gen).to(**bf),
                encoder_hidden_states=torch.randn(1, 16, cfg.joint_attention_dim, generator=gen).to(**bf),
                pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=gen).to(**bf),
                timestep=torch.tensor([0.5]), img_ids=torch.rand(64, 3), txt_ids=torch.zeros(16, 3),
                guidance=torch.tensor([3.5]), return_dict=False)


def _dit_out(pipe, inputs) -> torch.Tensor:
    with torch.inference_mode():
        return pipe.transformer(**inputs)[0].float()


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_scaled_mm_path_equals_the_dequantised_reference():
    gen = torch.Generator("cpu").manual_seed(0)
    x = (torch.randn(2, 7, 64, generator=gen) * 3).to(torch.bfloat16)
    x[0, 3] = 0                                            # an all-zero token quantises to zeros, not NaN
    weight = (torch.randn(48, 64, generator=gen) * 0.02).to(FP8)
    bias = (torch.randn(48, generator=gen) * 0.1).to(FP8)
    got, ref = fp8_linear(x, weight, bias), fp8_linear_reference(x, weight, bias)
    assert got.shape == (2, 7, 48) and got.dtype == torch.bfloat16
    assert torch.isfinite(got).all()
    # the same numbers up to the final bf16 rounding (CPU accumulates in float32 like the reference)
    torch.testing.assert_close(got.float(), ref.float(), rtol=1 / 128, atol=1e-3)
    # and the activation rounding is per token: each row's largest value maps to 448 exactly
    q, scale = quantize_rows(x.reshape(-1, 64))
    assert q.dtype == FP8 and scale.shape == (14, 1)
    assert torch.allclose(q.float().abs().amax(dim=1)[scale[:, 0] > 1e-9], torch.tensor(448.0))


def test_fp8_compute_of_the_dit_matches_its_reference_and_stays_near_bf16_compute():
    ref_pipe, fp8_pipe, bf16_pipe = build_tiny_pipeline(), build_tiny_pipeline(), build_tiny_pipeline()
    apply_precision(bf16_pipe, "all-linear")                        # today: hooks, bf16 matmuls
    apply_precision(fp8_pipe, "all-linear", "fp8", hooks=False)
    apply_precision(ref_pipe, "all-linear", "fp8", hooks=False)
    for m in ref_pipe.transformer.modules():                       # the same math, dequantised in float32
        if isinstance(m, Fp8Linear):
            m.forward = lambda x, m=m: fp8_linear_reference(x, m.weight, m.bias)
    inputs = _dit_inputs(fp8_pipe.transformer)
    got, ref, bf16 = (_dit_out(p, inputs) for p in (fp8_pipe, ref_pipe, bf16_pipe))
    assert _rel_l2(got, ref) < 0.01          # tensor-core path == its reference (bf16 rounding of each output)
    drift = _rel_l2(got, bf16)
    assert 0 < drift < 0.05                  # fp8 activations change the numbers, a little


def test_fp8_compute_keeps_one_fp8_copy_of_the_weights_and_gives_deterministic_pixels(tiny_settings, tiny_engine):
    engine = Engine.load(with_settings(tiny_settings, compute="fp8"), "cpu")
    try:
        dit = engine.pipe.transformer
        linears = [m for m in dit.modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(isinstance(m, Fp8Linear) and m.kernel is FP8_KERNELS[FALLBACK_KERNEL] for m in linears)
        assert set(linear_dtypes(dit).values()) == {FP8}
        assert dit_bytes(dit) == dit_bytes(tiny_engine.pipe.transformer)   # no second (bf16 or scaled) copy
        assert not any(hasattr(m, "_diffusers_hook") for m in dit.modules() if list(m.parameters(recurse=False)))
        assert dit.dtype == torch.bfloat16            # what diffusers' pipeline makes its position ids in
        spec = JobSpec("a cat", seed=3, steps=2, width=256, height=256)
        a, b = engine.generate(spec), engine.generate(spec)
        assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
        assert "fp8 compute" in a.precision and a.recipe["compute"] == f"fp8.{FALLBACK_KERNEL}"   # the kernel that ran (no Triton on a CPU)
        eager_bf16 = tiny_engine.generate(spec)
        diff = np.abs(np.asarray(a.images[0], dtype=int) - np.asarray(eager_bf16.images[0], dtype=int))
        assert 0 < diff.mean() < 8            # other pixels than bf16 compute, but close
        assert eager_bf16.recipe["compute"] == "bf16"
    finally:
        engine.close()


def test_bf16_compute_without_hooks_is_bit_identical_to_layerwise_casting():
    hooked, plain = build_tiny_pipeline(), build_tiny_pipeline()
    apply_precision(hooked, "all-linear")
    apply_precision(plain, "all-linear", "bf16", hooks=False)
    assert all(isinstance(m, UpcastLinear) for m in plain.transformer.modules() if isinstance(m, torch.nn.Linear))
    inputs = _dit_inputs(plain.transformer, seed=1)
    assert torch.equal(_dit_out(hooked, inputs), _dit_out(plain, inputs))


def test_compute_setting_resolves_per_device_and_refuses_bad_values(tiny_settings):
    assert resolve_compute("auto", "cpu") == "bf16"       # no fp8 tensor cores on a CPU
    assert resolve_compute("bf16", "cpu") == "bf16"
    assert resolve_compute("fp8", "cpu") == "fp8"          # CPU torch runs _scaled_mm (tests, determinism)
    with pytest.raises(ValueError, match="compute"):
        resolve_compute("fp16", "cpu")


@pytest.mark.parametrize("capability, compiled, fp8_mode, want", [
    ((9, 0), True, "all-linear", "fp8"),        # Hopper, compiled: fp8 tensor cores
    ((8, 9), True, "all-linear", "fp8"),        # Ada
    ((8, 0), True, "all-linear", "bf16"),       # Ampere: no fp8 tensor cores
    ((9, 0), False, "all-linear", "bf16"),      # eager fp8 is slower than bf16: auto keeps bf16
    ((9, 0), True, "off", "bf16"),              # bf16 storage computes in bf16
])
def test_auto_compute_on_gpus_picks_fp8_only_where_it_is_faster(monkeypatch, capability, compiled, fp8_mode, want):
    """`compute = "auto"` on a CUDA device (the GPU facts stand in: no GPU here): fp8 only on sm_89+ with compiled
    blocks and fp8 storage; `compute = "fp8"` below sm_89 is refused with a message naming the key and the fix."""
    import engine.compute_choice as cc
    import engine.fp8_compute as fc
    import engine.pipeline as pl
    from engine.errors import EngineError
    from engine.settings import EngineSettings

    monkeypatch.setattr(fc, "has_fp8_tensor_cores", lambda device: capability >= fc.FP8_CAPABILITY)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(cc, "compile_wanted", lambda setting, device: bool(setting) and compiled)
    settings = EngineSettings(compute="auto", fp8=fp8_mode, compile=True)
    assert pl.compute_and_compile(settings, "cuda:0") == (want, compiled)
    if capability < fc.FP8_CAPABILITY:
        with pytest.raises(EngineError, match=r'compute = "fp8" needs fp8 tensor cores \(sm_89\+\), but cuda:0 is '
                                              r'sm_80: set compute = "auto" or "bf16"'):
            pl.compute_and_compile(EngineSettings(compute="fp8"), "cuda:0")


@pytest.mark.parametrize("name", sorted(FP8_KERNELS))
def test_each_fp8_kernel_matches_its_dequantised_math(name):
    """Every kernel the bench compares computes x @ W.T + b: within fp8 activation rounding of the float32 result
    (row scaling: exactly the row reference on the CPU; one tensor scale: a coarser rounding), and
    `swap_linears(kernel=...)` gives a Linear that runs that kernel."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 64, generator=gen).to(torch.bfloat16)
    x[0, 0] *= 30                                  # one outlier token: what per-token scales are for
    weight = (torch.randn(32, 64, generator=gen) * 0.1).to(FP8)
    bias = torch.randn(32, generator=gen).to(FP8)
    exact = (x.float() @ weight.float().t() + bias.float())
    got = fp8_linear(x, weight, bias, FP8_KERNELS[name]).float()
    rel = float((got - exact).norm() / exact.norm())
    assert rel < (0.08 if FP8_KERNELS[name].scaling == "tensor" else 0.04), rel
    if FP8_KERNELS[name].scaling == "row":
        assert torch.equal(got, fp8_linear_reference(x, weight, bias).float())
    linear = torch.nn.Linear(64, 32).to(torch.bfloat16)
    linear.weight.data, linear.bias.data = weight, bias
    swap_linears([linear], "fp8", name)
    assert isinstance(linear, Fp8Linear) and linear.kernel is FP8_KERNELS[name]
    assert torch.equal(linear(x).float(), got)
