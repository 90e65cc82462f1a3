"""engine/fp8_quant.py: the Triton quantiser runs only where it can (CUDA tensors, Triton importable, width within
one program's registers); everywhere else `row-fast-tq` quantises with the torch code, so a CPU engine's pixels are
`row-fast`'s. The kernel's values on a GPU are checked by bench/step_probe.py (`quant-check`, docs/benchmarks.md)."""
import torch

from engine import fp8_quant
from engine.fp8_compute import FP8, FP8_KERNELS, fp8_linear


def test_the_kernel_never_takes_cpu_tensors_or_rows_wider_than_a_program():
    x = torch.randn(4, 4096, dtype=torch.bfloat16)
    assert not fp8_quant.fits(x)                       # a CPU tensor: the torch code quantises it
    assert fp8_quant.MAX_K >= 15360                   # FLUX's widest input (the single blocks' projection) fits


def test_row_fast_tq_on_the_cpu_computes_what_row_fast_does_for_wide_and_narrow_inputs():
    gen = torch.Generator().manual_seed(5)
    for k in (64, 4096):                                # below and above the kernel's min_k
        x = torch.randn(3, 5, k, generator=gen).to(torch.bfloat16)
        weight = (torch.randn(32, k, generator=gen) * 0.05).to(FP8)
        got = fp8_linear(x, weight, None, FP8_KERNELS["row-fast-tq"])
        assert torch.equal(got, fp8_linear(x, weight, None, FP8_KERNELS["row-fast"]))
    assert FP8_KERNELS["row-fast-tq"].min_k == 4096     # only the wide inputs go to the kernel on a GPU


def test_an_engine_where_the_quantiser_cannot_run_records_the_kernel_that_ran():
    """On the CPU (and wherever Triton or CUDA is missing, or the kernel's self-check fails) the default kernel
    falls back to `row-fast`, which computes the same values there; the recipe, PNG and /show name `row-fast`."""
    from engine.fp8_compute import DEFAULT_KERNEL, FALLBACK_KERNEL, kernel_for

    assert FP8_KERNELS[DEFAULT_KERNEL].quantizer == "triton"
    from engine.fp8_compute import quantize_rows

    assert not fp8_quant.usable("cpu", quantize_rows)
    assert kernel_for("cpu") == FALLBACK_KERNEL == "row-fast"
    assert kernel_for("cpu", "row") == "row"            # a kernel without the Triton quantiser is kept
