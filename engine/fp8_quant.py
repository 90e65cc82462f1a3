"""Per-token fp8 quantisation of the DiT's activations in one Triton kernel (the `row-fast-tq` fp8 kernel).

What it computes is `engine.fp8_compute.quantize_rows`: per row (token) the float32 scale max(|x|) / 448 (at least
MIN_SCALE / 448) and the e4m3 values clamp(x / scale, ±448); the division is a multiplication by the reciprocal,
which changes a float32's last bit for a few values and almost never the e4m3 value (the device bench counts the
values that differ from the torch code's on the GPU: bench/step_probe.py, `quant-check`). Which of 4, 8 or 16 warps
per row runs fastest is measured once per width (Triton's autotuner); the values do not depend on it.

Why a kernel of its own: inductor fuses the quantisation with whatever produced the activation (a GELU, the single
blocks' concatenation of attention and MLP, a norm and its modulation) into loop reductions that read each row
twice and reach about a third of the GPU's memory bandwidth; on an H200 those kernels are ~19 ms of a 93 ms fp8
step (docs/bench-logs/probe1.jsonl). Here one program holds a whole row in registers (FLUX's widest input is
15,360), so the row is read once and written once as e4m3; inductor still fuses the producer, which now writes
bf16 once. The op is a `torch.library.triton_op`, so compiled blocks trace it as one node.

Where it pays: the wide inputs (the feed-forward's second Linear, the single blocks' output projection), where
inductor's fused kernels were slowest; on the narrow ones (3,072) inductor's fusion with the norm before them wins
(run probe3: every input 0.1011 s/step, the wide ones only 0.0968). The kernel runs on CUDA tensors of width up to
MAX_K when Triton imports; elsewhere the torch code runs (the CPU, a CPU-only install without Triton).
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)

FP8_MAX = 448.0
MIN_SCALE = 1e-12
MAX_K = 16384            # one row in one program's registers

try:  # Triton ships with CUDA builds of torch; a CPU-only install may lack it
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton
except ImportError:  # pragma: no cover - depends on the install
    triton = None


if triton is not None:

    @triton.autotune(configs=[triton.Config({}, num_warps=w) for w in (4, 8, 16)], key=["BLOCK"])
    @triton.jit
    def _quantize_rows_kernel(x_ptr, q_ptr, s_ptr, K, stride_x, stride_q, BLOCK: tl.constexpr):
        # 1. The row, once, kept in its own dtype (|x| and max are exact in it: half the registers of float32).
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        mask = offs < K
        v = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
        # 2. Its scale: amax * (1 / 448) in float32 (what torch computes on CUDA for `amax / 448`), amax at least
        #    MIN_SCALE (an all-zero row quantises to zeros).
        amax = tl.maximum(tl.max(tl.abs(v), axis=0).to(tl.float32), 1e-12)
        scale = amax * (1.0 / 448.0)
        tl.store(s_ptr + row, scale)
        # 3. The e4m3 values: times the reciprocal (torch divides; the two differ in the last bit of a float32
        #    for a few values, which e4m3's rounding almost never sees), clamped to the finite range, rounded to
        #    nearest even.
        q = tl.clamp(v.to(tl.float32) * (1.0 / scale), -448.0, 448.0)
        tl.store(q_ptr + row * stride_q + offs, q.to(tl.float8e4nv), mask=mask)

    def _launch(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, launch) -> None:
        m, k = x.shape
        launch(_quantize_rows_kernel)[(m,)](x, q, scale, k, x.stride(0), q.stride(0),
                                            BLOCK=triton.next_power_of_2(k))

    @triton_op("fluxbot::quantize_rows_fp8", mutates_args={})
    def _quantize_rows_op(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, k = x.shape
        q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
        scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
        _launch(x, q, scale, wrap_triton)
        return q, scale


MIN_TRITON = (3, 0)      # tl.clamp, tl.float8e4nv as used here


def usable(device: str, reference: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> bool:
    """Whether the kernel runs on `device`: a CUDA device, Triton >= MIN_TRITON with torch's `triton_op`, and a
    self-check on a small tensor against `reference` (the torch code, `fp8_compute.quantize_rows`: the same values
    within e4m3's rounding) that passes. A failure is logged with what failed; the engine then quantises with the
    torch code (`fp8_compute.kernel_for`)."""
    dev = torch.device(device)
    if triton is None or dev.type != "cuda" or not torch.cuda.is_available():
        return False
    if _version(triton.__version__) < MIN_TRITON:
        log.warning("fp8 quantiser: Triton %s is older than %s; the torch code quantises instead",
                    triton.__version__, ".".join(map(str, MIN_TRITON)))
        return False
    try:
        return _self_check(dev, reference)
    except Exception as err:  # a driver/compiler problem: never fail jobs for an optimisation
        log.warning("fp8 quantiser: the Triton kernel failed its self-check on %s (%s: %s); the torch code "
                    "quantises instead", device, type(err).__name__, str(err)[:300])
        return False


def _self_check(dev: torch.device, reference) -> bool:
    gen = torch.Generator(dev).manual_seed(0)
    x = (torch.randn(8, 4096, device=dev, generator=gen) * 4).to(torch.bfloat16)
    x[0] = 0
    q, scale = quantize_rows_kernel(x)
    q_ref, scale_ref = reference(x)
    torch.cuda.synchronize(dev)
    same_scales = torch.allclose(scale, scale_ref, rtol=1e-6, atol=0)
    differing = int((q.view(torch.uint8) != q_ref.view(torch.uint8)).sum())
    if same_scales and differing <= x.numel() // 10_000:
        return True
    log.warning("fp8 quantiser: the Triton kernel's values differ from the torch code's on %s (scales equal: %s, "
                "%d of %d values); the torch code quantises instead", dev, same_scales, differing, x.numel())
    return False


def _version(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.split("+")[0].split(".")[:2] if p.isdigit()]
    return tuple(parts + [0] * (2 - len(parts)))


def fits(x: torch.Tensor) -> bool:
    """Whether the kernel takes this (M, K) activation: on a CUDA device, bf16/fp16/fp32, K ≤ MAX_K."""
    return (triton is not None and x.is_cuda and x.dim() == 2 and 0 < x.shape[1] <= MAX_K
            and x.dtype in (torch.bfloat16, torch.float16, torch.float32))


def quantize_rows_kernel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) activations -> (e4m3 values, float32 (M, 1) scales) by the Triton kernel (`fits(x)` must hold)."""
    return torch.ops.fluxbot.quantize_rows_fp8(x.contiguous())


