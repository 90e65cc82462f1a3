"""A LoRA file → low-rank pairs (down, up, scale) keyed by the diffusers module they change, checked against the
loaded model. The pairs are applied by engine/lora_apply.py; the stored (fp8) weights never change.

Layouts read:
- BFL / kohya (most FLUX LoRAs: sd-scripts' `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`, ComfyUI's
  `diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight`, with `alpha`), and their CLIP part
  (`lora_te1_text_model_encoder_layers_0_self_attn_q_proj`): converted here with engine/bfl_keys.py, whose
  widths come from the model's config. diffusers' converter for this layout hard-codes FLUX.1's widths (3072),
  so it cannot read a LoRA of the tiny model; a test checks that both give the same deltas at FLUX.1's widths.
- The mixed layout, kohya-style names of diffusers' modules (`lora_transformer_transformer_blocks_0_attn_to_q`,
  `…_ff_net_0_proj`, with `alpha`; a CLIP part as kohya's): read here the same way, each name the diffusers Linear
  whose dotted name it underscores. diffusers' converter for it maps only attention and embedder layers (a
  feed-forward or norm layer became the whole block, and the load failed).
- Everything else diffusers' `FluxLoraLoaderMixin.lora_state_dict` converts: diffusers/PEFT
  (`transformer.…lora_A.weight`), XLabs (`…processor.qkv_lora1.down.weight`). Its output is checked the same way.
The scale of a pair is alpha / rank when the file gives alpha (kohya's `alpha` tensors, PEFT's
`lora_adapter_metadata`), else 1 (diffusers' and PEFT's convention).
Refused with a clear LoraError: not a safetensors file, no LoRA tensors, DoRA, Control LoRAs (they change
norms and the input layer's width), T5 parts, and any pair whose module is missing or has other widths
("made for another model": `engine.lora_shapes.check_pair`, which the bot runs on the file's header before a job is
queued).
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.bfl_keys import SWAPPED_HALVES, bfl_linear_parts, swap_halves
from engine.lora_files import LoraError, read_header
from engine.lora_shapes import (COMPONENTS, MIXED_PREFIX, ModelWidths, bfl_target, check_fused_rows, check_pair,
                                clip_name, diffusers_target, is_bfl_layout, not_in_model, split_key)

log = logging.getLogger(__name__)

DTYPE = torch.bfloat16   # the pairs are kept and applied in the compute dtype


@dataclass
class LoraPair:
    down: torch.Tensor   # (rank, in_features)
    up: torch.Tensor     # (out_features, rank)
    scale: float = 1.0   # alpha / rank, or 1

    @property
    def nbytes(self) -> int:
        return (self.down.numel() + self.up.numel()) * self.down.element_size()


@dataclass
class LoraWeights:
    """The pairs of one file by component ("transformer", "text_encoder") and module name."""
    name: str
    layout: str
    pairs: dict[str, dict[str, LoraPair]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for comp in self.pairs.values() for p in comp.values())

    @property
    def rank(self) -> int:
        return max((p.down.shape[0] for comp in self.pairs.values() for p in comp.values()), default=0)


def load_lora(path: Path, pipe, name: str | None = None, widths: ModelWidths | None = None) -> LoraWeights:
    """Read `path` and convert it for `pipe` (a FluxPipeline); LoraError saying why when it cannot be used.
    `widths`: `pipe_widths(pipe)` when the caller holds it (an Engine computes it once), else computed here."""
    name = name or path.stem
    # 1. The file: a safetensors file with tensors.
    keys, metadata = read_header(path)
    if not keys:
        raise LoraError(f"{path.name} holds no tensors: it is not a LoRA.")
    tensors = _read_tensors(path)
    _refuse_unsupported(path.name, tensors)
    # 2. Convert the layout.
    widths = widths or pipe_widths(pipe)
    if is_bfl_layout(tensors):
        layout, pairs = _kohya_layout(tensors), _from_bfl(path.name, tensors, widths)
    else:
        layout, pairs = "diffusers", _from_diffusers(path.name, tensors, metadata)
    if not any(pairs.values()):
        raise LoraError(f"{path.name} has no LoRA weights fluxbot can read: it is not a LoRA for FLUX.")
    # 3. Check every pair against the model (engine/lora_shapes.py: the check admission makes on the header), in
    #    the compute dtype.
    weights = LoraWeights(name=name, layout=layout)
    real = _module_names(pipe)
    ready: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}   # each tensor of the file converted and checked once
    for component, modules in pairs.items():
        if getattr(pipe, component, None) is None:
            raise LoraError(f"{path.name} changes the {component}, which this model does not have.")
        weights.pairs[component] = {real[component][m]: _checked(path.name, widths, component, m, p, ready)
                                    for m, p in modules.items()}
    log.info("LoRA %s: %s layout, %d layers, rank %d, %.1f MiB", name, layout,
             sum(len(v) for v in weights.pairs.values()), weights.rank, weights.nbytes / 2**20)
    return weights


# ------------------------------------------------------------------------------------------------- reading

def pipe_widths(pipe) -> ModelWidths:
    """The widths of the loaded pipeline's Linears (the DiT's and CLIP's), for `lora_shapes.check_pair`."""
    linears = {}
    for component, names in _module_names(pipe).items():
        modules = dict(getattr(pipe, component).named_modules())
        linears[component] = {name: (modules[n].in_features, modules[n].out_features) for name, n in names.items()}
    return ModelWidths(linears=linears, bfl_parts=bfl_linear_parts(pipe.transformer.config))


def _module_names(pipe) -> dict[str, dict[str, str]]:
    """The Linears of the DiT and CLIP: their names as lora_shapes names them → their names in the module."""
    out = {}
    for component in COMPONENTS:
        model = getattr(pipe, component, None)
        if model is not None:
            canonical = clip_name if component == "text_encoder" else (lambda n: n)
            out[component] = {canonical(n): n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return out


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise LoraError(f"{path.name} cannot be read as safetensors ({str(e)[:120]}).") from None


def _refuse_unsupported(file: str, tensors: dict[str, torch.Tensor]) -> None:
    keys = list(tensors)
    if any("dora_scale" in k or "lora_magnitude_vector" in k for k in keys):
        raise LoraError(f"{file} is a DoRA, which fluxbot does not support (only plain LoRAs).")
    if any(k.endswith(("query_norm.scale", "key_norm.scale")) or ".norm_q." in k or ".norm_k." in k for k in keys):
        raise LoraError(f"{file} is a Control LoRA (it changes norms and the input layer), which fluxbot does not "
                        f"support.")
    if any("t5xxl" in k or k.startswith(("lora_te2_", "text_encoder_2.")) for k in keys):
        raise LoraError(f"{file} changes the T5 text encoder, which fluxbot does not support.")
    for k in keys:   # bias / norm deltas: harmless when all zero (some trainers write them), else unsupported
        if k.endswith((".diff_b", ".diff")) and bool(tensors[k].any()):
            raise LoraError(f"{file} changes biases or norms ({k}), which fluxbot does not support.")


# ------------------------------------------------------------------------------------------- BFL / kohya

def _from_bfl(file: str, tensors: dict[str, torch.Tensor], widths: ModelWidths) -> dict[str, dict[str, LoraPair]]:
    out: dict[str, dict[str, LoraPair]] = {"transformer": {}, "text_encoder": {}}
    # 1. Group the tensors by module.
    for module, roles in _grouped(file, tensors).items():
        # 2. Which model and which module: the DiT's BFL Linears (diffusers' for the mixed layout), or CLIP's.
        target = bfl_target(module, widths)
        if target is None:
            raise not_in_model(file, module)
        component, name = target
        down, up, scale = roles["down"], roles["up"], _scale(roles)
        if component == "text_encoder":
            out["text_encoder"][name] = LoraPair(down, up, scale)
            continue
        # 3. A fused BFL Linear: the up-matrix splits along the output rows of its diffusers parts (a diffusers
        #    Linear is its own one part).
        if name in SWAPPED_HALVES:
            up = swap_halves(up)
        parts = widths.dit_parts(name)
        if up.dim() == 2:
            check_fused_rows(file, module, up.shape[0], parts)
        for d_name, r0, r1 in parts:
            part = up if r1 < 0 else up[r0:r1]
            out["transformer"][d_name] = LoraPair(down, part.contiguous(), scale)
    return out


def _kohya_layout(tensors: dict[str, torch.Tensor]) -> str:
    return "mixed" if any(k.startswith(MIXED_PREFIX) for k in tensors) else "kohya/BFL"


def _grouped(file: str, tensors: dict[str, torch.Tensor]) -> dict[str, dict]:
    groups: dict[str, dict] = {}
    for key, t in tensors.items():
        split = split_key(key)
        if split is None:
            if key.endswith((".diff_b", ".diff")):
                continue  # all zero (checked before)
            raise LoraError(f"{file} has a tensor that is not part of a LoRA ('{key}'): it is not a LoRA fluxbot "
                            f"can read.")
        module, role = split
        groups.setdefault(module, {})[role] = t
    for module, roles in groups.items():
        if "down" not in roles or "up" not in roles:
            raise LoraError(f"{file} is incomplete: '{module}' lacks its {'up' if 'down' in roles else 'down'} "
                            f"matrix.")
    return {m: groups[m] for m in sorted(groups)}   # in name order, as the header check goes


def _scale(roles: dict) -> float:
    alpha = roles.get("alpha")
    if alpha is None:
        return 1.0
    return float(alpha.float().item()) / roles["down"].shape[0]


# ---------------------------------------------------------------------------------------------- diffusers

def _from_diffusers(file: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
                    ) -> dict[str, dict[str, LoraPair]]:
    """Through diffusers' FLUX LoRA loader (its converters), then grouped into pairs."""
    from diffusers.loaders.lora_pipeline import FluxLoraLoaderMixin

    # 1. diffusers' conversion (it mutates what it is given: a copy).
    try:
        state, alphas = FluxLoraLoaderMixin.lora_state_dict(dict(tensors), return_alphas=True)
    except (ValueError, KeyError, AssertionError, NotImplementedError, RuntimeError, IndexError) as e:
        why = " ".join(str(e).split())[:120]
        raise LoraError(f"{file} is not a FLUX LoRA fluxbot can read ({type(e).__name__}: {why}).") from None
    alphas = {k: v for k, v in (alphas or {}).items()}
    peft_alpha = _peft_alphas(metadata)
    out: dict[str, dict[str, LoraPair]] = {c: {} for c in COMPONENTS}
    # 2. Pairs per module; keys without a component name belong to the DiT.
    groups = _grouped(file, {**state, **alphas})
    for module, roles in groups.items():
        component, name = diffusers_target(module)
        scale = _scale(roles)
        if "alpha" not in roles and component in peft_alpha:
            scale = peft_alpha[component] / roles["down"].shape[0]
        out[component][name] = LoraPair(roles["down"], roles["up"], scale)
    return out


def _peft_alphas(metadata: dict[str, str]) -> dict[str, float]:
    """`lora_alpha` per component from diffusers' `lora_adapter_metadata` (PEFT's LoraConfig as saved)."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    out = {}
    for key, value in data.items() if isinstance(data, dict) else ():
        m = re.fullmatch(r"(transformer|text_encoder)\.lora_alpha", key)
        if m and isinstance(value, (int, float)):
            out[m.group(1)] = float(value)
    return out


# ------------------------------------------------------------------------------------------------ checking

def _checked(file: str, widths: ModelWidths, component: str, module: str, pair: LoraPair,
             ready: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> LoraPair:
    """The pair in the compute dtype, after checking that the module exists and has the pair's widths (the check
    admission made on the file's header) and that its values are finite. `ready` remembers each tensor done: the
    parts of a fused BFL Linear share their down matrix, converted and checked once."""
    down, up = pair.down, pair.up
    check_pair(file, component, module, tuple(down.shape), tuple(up.shape), widths)
    return LoraPair(_ready(file, module, down, ready), _ready(file, module, up, ready), pair.scale)


def _ready(file: str, module: str, t: torch.Tensor, ready: dict[int, tuple[torch.Tensor, torch.Tensor]]
           ) -> torch.Tensor:
    """`t` in the compute dtype, contiguous, and finite (checked in that dtype: what the hooks will use). The check
    is `aminmax`, which propagates NaN (torch documents it) and sees ±inf as the min or max: one pass without the
    bool tensors of `isfinite(t).all()` (~4× slower on bf16 on the CPU)."""
    if id(t) not in ready:
        out = t.to(DTYPE).contiguous()
        if out.numel():
            lo, hi = torch.aminmax(out)
            if not (math.isfinite(lo.item()) and math.isfinite(hi.item())):
                raise LoraError(f"{file} is damaged: '{module}' holds NaN or infinite values.")
        ready[id(t)] = (t, out)   # `t` held: its id stays its own while `ready` lives
    return ready[id(t)][1]
