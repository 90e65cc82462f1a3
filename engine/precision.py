"""Weight precision: the DiT stored in float8_e4m3fn and computed in bf16; text encoders and VAE in bf16.

Modes (`[engine] fp8`):
- `all-linear`: every nn.Linear of the DiT is stored in fp8 (the modulation Linears `norm1.linear`… too);
  norm layers that are not Linear and the positional embedding stay bf16. ~11.1 GiB for FLUX.1-dev.
- `diffusers-default`: diffusers' own skip list (`pos_embed`, `patch_embed`, `norm`, `proj_in`, `proj_out`
  plus Flux's `pos_embed`, `norm`), so every `norm*.linear` stays bf16. ~14.1 GiB.
- `off`: the DiT in bf16.

Call `apply_precision` before any offloading: group offloading pins whatever dtype the weights have then.
T5 is never layerwise-cast (it upcasts internally; fp8 storage would hurt its precision).
How the fp8 Linears compute (bf16 upcast or fp8 tensor cores) is engine/fp8_compute.py's.
`lean_layerwise_casting` makes diffusers' casting hooks keep the fp8 weights aside instead of re-casting them
after each forward (the streamer's executor applies it to the DiT's blocks).
"""
from __future__ import annotations

import logging
import re

import torch
from torch import nn

from engine.fp8_compute import DEFAULT_KERNEL, swap_linears

log = logging.getLogger(__name__)

STORAGE = torch.float8_e4m3fn
COMPUTE = torch.bfloat16
# Patterns (regex, matched with re.search against module names) kept in bf16 under "all-linear": only
# non-Linear layers are affected by these names in FluxTransformer2DModel, so every Linear is fp8.
ALL_LINEAR_SKIP = ("pos_embed",)


def apply_precision(pipe, mode: str, compute: str = "bf16", *, hooks: bool = True,
                    kernel: str = DEFAULT_KERNEL) -> str:
    """Cast the pipeline's weights for `mode` and return the precision string recorded in each Result.

    `compute` (engine/fp8_compute.py's `resolve_compute`): "bf16" upcasts each fp8 weight for a bf16 matmul,
    "fp8" multiplies on fp8 tensor cores. `hooks`: bf16 compute through diffusers' layerwise-casting hooks (the
    eager default); False gives the fp8 Linears a plain forward instead (`UpcastLinear`, same numbers), which
    torch.compile can trace (engine/compile.py). `kernel`: the fp8 kernel of fp8 compute (`fp8_compute.kernel_for`
    says which one a device can run)."""
    from diffusers.hooks import apply_layerwise_casting
    from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS

    # 1. Text encoders and VAE: plain bf16 (modules a model insists on keeping in fp32 stay fp32).
    for name in ("text_encoder", "text_encoder_2", "vae"):
        module = getattr(pipe, name, None)
        if module is not None:
            _to_bf16_keeping_fp32(module)
    # 2. The DiT: bf16 first, then fp8 storage on the chosen Linears.
    dit = pipe.transformer
    _to_bf16_keeping_fp32(dit)
    if mode == "off":
        dit_text = "bfloat16"
    elif compute == "bf16" and hooks:
        classes, skip = _selection(dit, mode, _GO_LC_SUPPORTED_PYTORCH_LAYERS)
        not_cast = tuple(c for c in _GO_LC_SUPPORTED_PYTORCH_LAYERS if c not in classes)
        apply_layerwise_casting(dit, storage_dtype=STORAGE, compute_dtype=COMPUTE, skip_modules_pattern=skip,
                                skip_modules_classes=not_cast or None)
        dit_text = f"float8_e4m3fn({mode})/bf16 compute"
    else:
        _fp8_linears_without_hooks(dit, mode, compute, kernel)
        dit_text = f"float8_e4m3fn({mode})/{compute} compute"
    # 3. Describe it.
    text = f"dit={dit_text}, text=bf16, vae=bf16"
    log.info("precision: %s (DiT weights %.2f GiB)", text, dit_bytes(dit) / 2**30)
    return text


def fp8_module_names(dit: torch.nn.Module, mode: str) -> set[str]:
    """Names of the DiT's modules that `apply_precision(…, mode)` stores in fp8 (works on a meta model).

    The loader uses it to cast those weights to fp8 while reading the file, so that the whole DiT never
    sits in host RAM in bf16 (24 GB for FLUX.1-dev); it mirrors diffusers' selection: a supported layer
    class whose dotted name matches no skip pattern (re.search).
    """
    from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS

    if mode == "off":
        return set()
    classes, skip = _selection(dit, mode, _GO_LC_SUPPORTED_PYTORCH_LAYERS)
    return {name for name, m in dit.named_modules()
            if name and isinstance(m, classes) and not any(re.search(p, name) for p in skip)}


def _fp8_linears_without_hooks(dit: torch.nn.Module, mode: str, compute: str, kernel: str = DEFAULT_KERNEL) -> None:
    """fp8 storage of the selected Linears with a hook-free forward (`fp8_compute.swap_linears`); any other
    selected layer class keeps diffusers' casting hooks (FLUX's DiT has none)."""
    from diffusers.hooks import apply_layerwise_casting  # lazy: diffusers takes seconds to import
    from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS

    names = fp8_module_names(dit, mode)
    linears = [m for n, m in dit.named_modules() if n in names and isinstance(m, torch.nn.Linear)]
    for linear in linears:
        linear.to(STORAGE)   # what the hooks' initialisation does; the loader's fp8 weights stay as they are
    swap_linears(linears, compute, kernel)
    _mark_compute_dtype(dit)
    classes, skip = _selection(dit, mode, _GO_LC_SUPPORTED_PYTORCH_LAYERS)
    others = tuple(c for c in classes if c is not torch.nn.Linear)
    if others and any(isinstance(m, others) for n, m in dit.named_modules() if n in names):
        not_cast = tuple(c for c in _GO_LC_SUPPORTED_PYTORCH_LAYERS if c not in others)
        apply_layerwise_casting(dit, storage_dtype=STORAGE, compute_dtype=COMPUTE, skip_modules_pattern=skip,
                                skip_modules_classes=not_cast)


def _mark_compute_dtype(dit: torch.nn.Module) -> None:
    """Make diffusers' `dit.dtype` say bf16, as it does under its casting hooks: without hooks it would name the
    first parameter's dtype (fp8), and FluxPipeline makes its position ids in `transformer.dtype` when it has no
    text encoder. diffusers reads the compute dtype from a hook named "layerwise_casting" on any submodule, so a
    pass-through hook of that name goes on the parameterless position embedding (not on a block: the blocks'
    forwards are compiled)."""
    from diffusers.hooks import HookRegistry, ModelHook  # lazy: diffusers takes seconds to import

    marker = getattr(dit, "pos_embed", None)
    if marker is None or list(marker.parameters()):
        return
    hook = ModelHook()
    hook.compute_dtype, hook.storage_dtype = COMPUTE, STORAGE
    registry = HookRegistry.check_if_exists_or_initialize(marker)
    if registry.get_hook("layerwise_casting") is None:
        registry.register_hook(hook, "layerwise_casting")


def _selection(dit: torch.nn.Module, mode: str, supported: tuple) -> tuple[tuple, tuple[str, ...]]:
    """(layer classes stored in fp8, skip patterns) of a mode."""
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    if mode == "all-linear":
        return (torch.nn.Linear,), ALL_LINEAR_SKIP
    if mode == "diffusers-default":
        skip = tuple(DEFAULT_SKIP_MODULES_PATTERN) + tuple(getattr(dit, "_skip_layerwise_casting_patterns", None) or ())
        return supported, tuple(dict.fromkeys(skip))
    raise ValueError(f"[engine] fp8 = {mode!r}: must be all-linear, diffusers-default or off")


def _to_bf16_keeping_fp32(module: torch.nn.Module) -> None:
    """Cast floating weights to bf16, leaving the submodules a transformers model always keeps in fp32
    (`_keep_in_fp32_modules_strict`; transformers 5 keeps the plain `_keep_in_fp32_modules` in fp32 only
    for fp16, so T5's `wo` layers are bf16 here, as `from_pretrained(dtype=bf16)` makes them)."""
    keep = tuple(getattr(module, "_keep_in_fp32_modules_strict", None) or ())
    for name, sub in module.named_modules():
        if keep and any(part in keep for part in name.split(".")):
            continue
        for key, t in list(sub.named_parameters(recurse=False)) + list(sub.named_buffers(recurse=False)):
            if t.dtype in (torch.float32, torch.float64, torch.float16):  # fp8 from the loader stays fp8
                t.data = t.data.to(COMPUTE)


def dit_bytes(module: torch.nn.Module) -> int:
    """Bytes of the module's parameters and buffers as stored now."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def linear_dtypes(module: torch.nn.Module) -> dict[str, torch.dtype]:
    """The stored weight dtype of every nn.Linear, by module name (used by tests and `doctor`)."""
    return {name: m.weight.dtype for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)}


def lean_layerwise_casting(modules: list[nn.Module]) -> int:
    """Make diffusers' layerwise-casting hooks inside `modules` skip the fp8 re-cast after each forward.

    diffusers' hook casts a Linear to bf16 before its forward and back to fp8 after it: the second cast is
    a kernel that reads 2 bytes and writes 1 per weight and allocates, only to produce a copy of the fp8
    weights the layer already had. Here the fp8 tensors are kept aside before the upcast and put back after
    the forward (no kernel). The upcast itself stays on the compute stream. Returns the layers changed.
    """
    from diffusers.hooks import HookRegistry  # lazy: diffusers takes seconds to import

    changed = 0
    for root in modules:
        for module in root.modules():
            registry = getattr(module, "_diffusers_hook", None)
            hook = registry.get_hook("layerwise_casting") if isinstance(registry, HookRegistry) else None
            if hook is None:
                continue
            index = registry._hook_order.index("layerwise_casting")
            fn_ref = registry._fn_refs[index]
            kept: dict[str, torch.Tensor] = {}

            def pre_forward(mod, *args, _hook=hook, _kept=kept, **kwargs):
                for name, param in mod.named_parameters(recurse=False):
                    if param.dtype == _hook.storage_dtype:
                        _kept[name] = param.data
                        param.data = param.data.to(_hook.compute_dtype)
                return args, kwargs

            def post_forward(mod, output, _kept=kept):
                for name, param in mod.named_parameters(recurse=False):
                    if name in _kept:
                        param.data = _kept.pop(name)
                return output

            fn_ref.pre_forward, fn_ref.post_forward = pre_forward, post_forward
            changed += 1
    log.debug("lean layerwise casting on %d layers", changed)
    return changed
