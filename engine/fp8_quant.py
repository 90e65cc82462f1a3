"""Per-token fp8 quantisation of the DiT's activations in one Triton kernel (the `row-fast.tq` fp8 kernel).

What it computes is `engine.fp8_compute.quantize_rows`, bit for bit: per row (token) the float32 scale
max(|x|) / 448 (at least MIN_SCALE / 448) and the e4m3 values clamp(x / scale, ±448), with an IEEE division (the
CPU runs the torch code; tests/engine/test_fp8_quant.py runs this kernel in Triton's interpreter against it).

Why a kernel of its own: inductor fuses the quantisation with whatever produced the activation (a GELU, the single
blocks' concatenation of attention and MLP, a norm and its modulation) into loop reductions that read each row
twice and reach about a third of the GPU's memory bandwidth; on an H200 those kernels are ~19 ms of a 93 ms fp8
step (docs/bench-logs/probe1.jsonl). Here one program holds a whole row in registers (FLUX's widest input is
15,360), so the row is read once and written once as e4m3; inductor still fuses the producer, which now writes
bf16 once. The op is a `torch.library.triton_op`, so compiled blocks trace it as one node.

Only where it pays: CUDA tensors, K a multiple of 16 up to MAX_K, and a Triton that imports; elsewhere the
torch code runs (the CPU, and a CPU-only install without Triton).
"""
from __future__ import annotations

import logging

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

    @triton.jit
    def _quantize_rows_kernel(x_ptr, q_ptr, s_ptr, K, stride_x, stride_q, BLOCK: tl.constexpr):
        # 1. The row, once, in float32 (bf16 -> float32 is exact).
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        mask = offs < K
        v = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
        # 2. Its scale: amax / 448, amax at least MIN_SCALE (an all-zero row quantises to zeros).
        amax = tl.maximum(tl.max(tl.abs(v), axis=0), 1e-12)
        scale = tl.div_rn(amax, 448.0)
        tl.store(s_ptr + row, scale)
        # 3. The e4m3 values: an IEEE division, clamped to the finite range, rounded to nearest even.
        q = tl.clamp(tl.div_rn(v, scale), -448.0, 448.0)
        tl.store(q_ptr + row * stride_q + offs, q.to(tl.float8e4nv), mask=mask)

    def _launch(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, launch) -> None:
        m, k = x.shape
        block = triton.next_power_of_2(k)
        warps = 4 if block <= 4096 else 8 if block <= 8192 else 16
        launch(_quantize_rows_kernel)[(m,)](x, q, scale, k, x.stride(0), q.stride(0), BLOCK=block, num_warps=warps)

    @triton_op("fluxbot::quantize_rows_fp8", mutates_args={})
    def _quantize_rows_op(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, k = x.shape
        q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
        scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
        _launch(x, q, scale, wrap_triton)
        return q, scale


def available() -> bool:
    """Whether the Triton kernel can run here (Triton imports and a CUDA device is there)."""
    return triton is not None and torch.cuda.is_available()


def fits(x: torch.Tensor) -> bool:
    """Whether the kernel takes this (M, K) activation: on a CUDA device, bf16/fp16/fp32, K ≤ MAX_K."""
    return (triton is not None and x.is_cuda and x.dim() == 2 and 0 < x.shape[1] <= MAX_K
            and x.dtype in (torch.bfloat16, torch.float16, torch.float32))


def quantize_rows_kernel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) activations -> (e4m3 values, float32 (M, 1) scales) by the Triton kernel (`fits(x)` must hold)."""
    return torch.ops.fluxbot.quantize_rows_fp8(x.contiguous())


def quantize_rows_interpreted(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel itself on CPU tensors, for Triton's interpreter (TRITON_INTERPRET=1 before Triton is imported):
    what the tests compare with the torch code."""
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn)
    scale = torch.empty((m, 1), dtype=torch.float32)
    _launch(x.contiguous(), q, scale, lambda kernel: kernel)
    return q, scale
