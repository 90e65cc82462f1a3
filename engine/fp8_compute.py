"""How the DiT's fp8-stored Linears compute: `[engine] compute` = "bf16" or "fp8" (or "auto").

- bf16 (today's numerics): each float8_e4m3fn weight is upcast to bf16 and multiplied in bf16. The default
  eager path does it with diffusers' layerwise-casting hooks (engine/precision.py); `UpcastLinear` is the same
  math as a plain forward (no hooks, no `param.data` swaps), which is what `torch.compile` can trace.
- fp8: `Fp8Linear` multiplies on fp8 tensor cores (`torch._scaled_mm`, sm_89+): the activation is quantised per
  token (row) to e4m3 with a dynamic float32 scale (row amax / 448), the weight is the stored e4m3 tensor
  itself, with a float32 row scale of 1 per output row. ONE copy of the weights exists: the stored fp8 one.
  Why scale 1: the stored weights are already e4m3 values (the fp8 cache casts bf16 -> e4m3 without a scale,
  engine/dit_cache.py) and the bf16 path multiplies exactly these values; a power-of-two row scale would move
  them exactly and change nothing, any other scale would round them a second time. So fp8 compute differs
  from bf16 compute only by the activation rounding (and the accumulation order), which is what
  docs/engine.md measures.
  `torch._scaled_mm` wants the second operand column-major (the (N, K) row-major weight `.t()` is exactly
  that, no copy), K and N multiples of 16, row-wise scales (M, 1) and (1, N) in float32, bf16 out; a Linear
  whose shape does not fit stays an `UpcastLinear`. The CPU build of torch runs `_scaled_mm` too (exactly, in
  float32 accumulation), so the CPU tests run this very code; `fp8_linear_reference` is the same math
  dequantised, which the tests and the GPU validation compare against.
  How the matmul scales and accumulates is its kernel (`FP8_KERNELS`); the default, `row-fast-tq`, is the row-wise
  scaling above with Hopper's fast accumulation (`use_fast_accum`), which the CPU computes exactly like `row`, and
  its widest activations quantised by engine/fp8_quant.py's Triton kernel on a GPU (the torch code elsewhere).

The Linear classes are swapped in place (`module.__class__`): the weight Parameters stay the same objects, so the
streamer (engine/streamer.py) keeps pointing them at host copies and ring slots as before.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine import fp8_quant

log = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0            # largest finite float8_e4m3fn
MIN_SCALE = 1e-12          # an all-zero row quantises to zeros instead of dividing by zero
ALIGN = 16                 # _scaled_mm: K and N multiples of 16
FP8_CAPABILITY = (8, 9)    # fp8 tensor cores: Ada (sm_89), Hopper (sm_90) and newer


def resolve_compute(setting: str, device: str) -> str:
    """The compute a setting means on `device`: "auto" is fp8 on an sm_89+ CUDA device, else bf16. "fp8" on a
    device without fp8 tensor cores is refused with a message naming the key."""
    if setting not in ("auto", "bf16", "fp8"):
        raise ValueError(f"[engine] compute = {setting!r}: must be auto, bf16 or fp8")
    capable = has_fp8_tensor_cores(device)
    if setting == "auto":
        return "fp8" if capable else "bf16"
    if setting == "fp8" and not capable and torch.device(device).type == "cuda":
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        raise ValueError(f"[engine] compute = \"fp8\" needs fp8 tensor cores (sm_89+), but {device} is sm_{major}{minor}: "
                         f"set compute = \"auto\" or \"bf16\"")
    return setting


def has_fp8_tensor_cores(device: str) -> bool:
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(dev) >= FP8_CAPABILITY


def fits_scaled_mm(linear: nn.Linear) -> bool:
    """Whether `_scaled_mm` can take this Linear's weight: fp8 storage, in and out features multiples of 16."""
    return (linear.weight.dtype == FP8 and linear.in_features % ALIGN == 0 and linear.out_features % ALIGN == 0)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) activations -> (e4m3 values, float32 (M, 1) scales) with x ≈ q * scale per row."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp_min(MIN_SCALE)
    scale = amax / FP8_MAX
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def quantize_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) activations -> (e4m3 values, one float32 scale for the whole tensor) with x ≈ q * scale."""
    amax = x.abs().amax().float().clamp_min(MIN_SCALE)
    scale = amax / FP8_MAX
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


@dataclass(frozen=True)
class Fp8Kernel:
    """How an fp8 matmul scales and accumulates. `scaling`: "row" (one activation scale per token, one weight
    scale per output row: CUTLASS's row-wise kernel) or "tensor" (one scale each: cuBLASLt's kernels);
    `fast_accum`: Hopper's faster accumulation (partial sums in lower precision, promoted periodically);
    `quantizer`: what quantises the activations of a row-scaled kernel: "torch" (the torch code, which inductor fuses
    with the op before it) or "triton" (engine/fp8_quant.py's kernel, same values, for inputs at least `min_k`
    wide; the torch code elsewhere and wherever the kernel cannot run, e.g. the CPU)."""
    name: str
    scaling: str
    fast_accum: bool
    quantizer: str = "torch"
    min_k: int = 0


# The kernels the bench compares (bench/fast_bench.py, bench/step_probe.py); `DEFAULT_KERNEL` is what
# `compute = "fp8"` runs: `row-fast-tq`. `row-fast` was 5.5 % faster than `row` on an H200 (0.1023 vs 0.1083 s/step,
# run `kern`) with the same drift; `row-fast-tq` takes its forward's kernels from 93.3 to 88.5 ms (0.0990 -> 0.0925
# s/step with CUDA graphs, run `fin1`, docs/bench-logs/fin1-gpu0.jsonl), drift 0.0615 vs 0.0613. The recipe names
# the kernel (engine/recipe.py's `compute_name`): each one's GPU pixels differ from the others'.
FP8_KERNELS = {k.name: k for k in (Fp8Kernel("row", "row", False), Fp8Kernel("row-fast", "row", True),
                                   Fp8Kernel("tensor-fast", "tensor", True),
                                   Fp8Kernel("row-fast-tq", "row", True, quantizer="triton", min_k=4096))}
DEFAULT_KERNEL = "row-fast-tq"
FALLBACK_KERNEL = "row-fast"   # what the default computes where its Triton quantiser cannot run


def kernel_for(device: str, wanted: str = DEFAULT_KERNEL) -> str:
    """The fp8 kernel an engine on `device` runs: `wanted`, unless it quantises with Triton and engine/fp8_quant.py's
    kernel cannot run there (no CUDA device, no usable Triton, or its self-check failed: logged) — then
    `FALLBACK_KERNEL`, which computes what `wanted` does elsewhere, so the recipe names what really ran."""
    if FP8_KERNELS[wanted].quantizer != "triton" or fp8_quant.usable(device, quantize_rows):
        return wanted
    log.info("fp8 kernel %s needs Triton on a CUDA device; %s runs %s", wanted, device, FALLBACK_KERNEL)
    return FALLBACK_KERNEL


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               kernel: Fp8Kernel = FP8_KERNELS[DEFAULT_KERNEL]) -> torch.Tensor:
    """y = x @ weight.T + bias on fp8 tensor cores; `weight` is the stored (N, K) e4m3 tensor, weight scale 1."""
    # 1. Flatten to (M, K) rows and quantise them: each row (token) with its own scale, or all with one.
    lead, k = x.shape[:-1], x.shape[-1]
    n = weight.shape[0]
    if kernel.scaling == "row":
        rows = x.reshape(-1, k)
        if kernel.quantizer == "triton" and k >= kernel.min_k and fp8_quant.fits(rows):
            q, scale_a = fp8_quant.quantize_rows_kernel(rows)
        else:
            q, scale_a = quantize_rows(rows)
        scale_b = torch.ones((1, n), dtype=torch.float32, device=x.device)
    else:
        q, scale_a = quantize_tensor(x.reshape(-1, k))
        scale_b = torch.ones((), dtype=torch.float32, device=x.device)
    q = q.contiguous()      # _scaled_mm: the first operand row-major (a no-op unless x was a strided view)
    # 2. One scaled matmul; the bias (stored fp8 with its Linear) is added in the GEMM's epilogue.
    out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    b = bias.to(out_dtype) if bias is not None else None
    y = torch._scaled_mm(q, weight.t(), scale_a=scale_a, scale_b=scale_b, bias=b, out_dtype=out_dtype,
                         use_fast_accum=kernel.fast_accum)
    return y.reshape(*lead, n).to(x.dtype)


def fp8_linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The same math as `fp8_linear`, dequantised and in float32: the recipe's numerics without tensor cores."""
    lead, k = x.shape[:-1], x.shape[-1]
    q, scale_a = quantize_rows(x.reshape(-1, k))
    y = (q.float() * scale_a) @ weight.float().t()
    if bias is not None:
        y = y + bias.float()
    return y.reshape(*lead, weight.shape[0]).to(x.dtype)


class UpcastLinear(nn.Linear):
    """bf16 compute of an fp8-stored Linear without hooks: upcast the weight (and bias), then a bf16 matmul —
    the same numbers as diffusers' layerwise casting."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


class Fp8Linear(nn.Linear):
    """fp8 tensor-core compute of an fp8-stored Linear (see `fp8_linear`); `kernel` is a class attribute (one
    subclass per kernel, made by `fp8_linear_class`), so a compiled graph sees it as a constant."""

    kernel: Fp8Kernel = FP8_KERNELS[DEFAULT_KERNEL]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.bias, self.kernel)


_KERNEL_CLASSES = {DEFAULT_KERNEL: Fp8Linear}
for _name, _kernel in FP8_KERNELS.items():
    if _name != DEFAULT_KERNEL:
        _KERNEL_CLASSES[_name] = type(f"Fp8Linear_{_name.replace('-', '_')}", (Fp8Linear,), {"kernel": _kernel})


def fp8_linear_class(kernel: str) -> type[Fp8Linear]:
    if kernel not in _KERNEL_CLASSES:
        raise ValueError(f"fp8 kernel {kernel!r}: one of {', '.join(_KERNEL_CLASSES)}")
    return _KERNEL_CLASSES[kernel]


def swap_linears(linears: list[nn.Linear], compute: str, kernel: str = DEFAULT_KERNEL) -> dict[str, int]:
    """Give each fp8-stored Linear the forward of `compute` ("fp8": an `Fp8Linear` running `kernel` where
    `_scaled_mm` fits, else `UpcastLinear`; "bf16": `UpcastLinear`). Returns how many became which (for the log
    and the tests)."""
    fp8_class = fp8_linear_class(kernel)
    counts = {"fp8": 0, "bf16": 0}
    for linear in linears:
        if compute == "fp8" and fits_scaled_mm(linear):
            linear.__class__ = fp8_class
            counts["fp8"] += 1
        else:
            linear.__class__ = UpcastLinear
            counts["bf16"] += 1
    log.info("DiT Linears: %d on fp8 tensor cores (%s), %d upcast to bf16", counts["fp8"], kernel, counts["bf16"])
    return counts
