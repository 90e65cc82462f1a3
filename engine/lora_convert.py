"""A LoRA file → low-rank pairs (down, up, scale) keyed by the diffusers module they change, checked against the
loaded model. The pairs are applied by engine/lora_apply.py; the stored (fp8) weights never change.

Layouts read:
- BFL / kohya (most FLUX LoRAs: sd-scripts' `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`, ComfyUI's
  `diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight`, with `alpha`), and their CLIP part
  (`lora_te1_text_model_encoder_layers_0_self_attn_q_proj`): converted here with engine/bfl_keys.py, whose
  widths come from the model's config. diffusers' converter for this layout hard-codes FLUX.1's widths (3072),
  so it cannot read a LoRA of the tiny model; a test checks that both give the same deltas at FLUX.1's widths.
- Everything else diffusers' `FluxLoraLoaderMixin.lora_state_dict` converts: diffusers/PEFT
  (`transformer.…lora_A.weight`), XLabs (`…processor.qkv_lora1.down.weight`), the mixed `lora_transformer_…`
  layout. Its output is checked the same way.
The scale of a pair is alpha / rank when the file gives alpha (kohya's `alpha` tensors, PEFT's
`lora_adapter_metadata`), else 1 (diffusers' and PEFT's convention).
Refused with a clear LoraError: not a safetensors file, no LoRA tensors, DoRA, Control LoRAs (they change
norms and the input layer's width), T5 parts, and any pair whose module is missing or has other widths
("made for another model").
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.bfl_keys import SWAPPED_HALVES, bfl_linear_parts, swap_halves
from engine.lora_files import LoraError, read_header

log = logging.getLogger(__name__)

DTYPE = torch.bfloat16   # the pairs are kept and applied in the compute dtype
COMPONENTS = ("transformer", "text_encoder")
_PAIR_SUFFIXES = {"lora_down.weight": "down", "lora_up.weight": "up", "lora_A.weight": "down",
                  "lora_B.weight": "up", "down.weight": "down", "up.weight": "up", "alpha": "alpha"}
_BFL_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "lora_unet_")
_CLIP_PREFIXES = ("lora_te1_", "lora_te_", "text_encoders.clip_l.transformer.")
_BFL_ROOTS = ("double_blocks", "single_blocks", "img_in", "txt_in", "time_in", "vector_in", "guidance_in",
              "final_layer")


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


def load_lora(path: Path, pipe, name: str | None = None) -> LoraWeights:
    """Read `path` and convert it for `pipe` (a FluxPipeline); LoraError saying why when it cannot be used."""
    name = name or path.stem
    # 1. The file: a safetensors file with tensors.
    keys, metadata = read_header(path)
    if not keys:
        raise LoraError(f"{path.name} holds no tensors: it is not a LoRA.")
    tensors = _read_tensors(path)
    _refuse_unsupported(path.name, tensors)
    # 2. Convert the layout.
    if _is_bfl_layout(tensors):
        layout, pairs = "kohya/BFL", _from_bfl(path.name, tensors, pipe)
    else:
        layout, pairs = "diffusers", _from_diffusers(path.name, tensors, metadata)
    if not any(pairs.values()):
        raise LoraError(f"{path.name} has no LoRA weights fluxbot can read: it is not a LoRA for FLUX.")
    # 3. Check every pair against the model, in the compute dtype.
    weights = LoraWeights(name=name, layout=layout)
    for component, modules in pairs.items():
        model = getattr(pipe, component, None)
        if model is None:
            raise LoraError(f"{path.name} changes the {component}, which this model does not have.")
        weights.pairs[component] = {m: _checked(path.name, model, component, m, p) for m, p in modules.items()}
    log.info("LoRA %s: %s layout, %d layers, rank %d, %.1f MiB", name, layout,
             sum(len(v) for v in weights.pairs.values()), weights.rank, weights.nbytes / 2**20)
    return weights


# ------------------------------------------------------------------------------------------------- reading

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


def _is_bfl_layout(tensors: dict[str, torch.Tensor]) -> bool:
    """kohya / BFL names (sd-scripts' `lora_unet_…`, ComfyUI's `diffusion_model.double_blocks…`); not XLabs
    (BFL block names too, with `processor`) nor the mixed `lora_transformer_` layout, which diffusers converts."""
    if any("processor" in k or k.startswith("lora_transformer_") for k in tensors):
        return False
    if any(k.startswith("lora_unet_") for k in tensors):
        return True                   # sd-scripts: FLUX's blocks, or another model's (refused by name later)
    for k in tensors:
        stripped = k
        for prefix in _BFL_PREFIXES:
            stripped = stripped.removeprefix(prefix)
        if stripped.startswith(_BFL_ROOTS):
            return True
    return False


def _split_key(key: str) -> tuple[str, str] | None:
    """(module, "down" | "up" | "alpha") of a LoRA tensor name, None for anything else."""
    for suffix, role in _PAIR_SUFFIXES.items():
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], role
    return None


# ------------------------------------------------------------------------------------------- BFL / kohya

def _from_bfl(file: str, tensors: dict[str, torch.Tensor], pipe) -> dict[str, dict[str, LoraPair]]:
    dit_parts = bfl_linear_parts(pipe.transformer.config)
    by_underscore = {bfl.replace(".", "_"): bfl for bfl in dit_parts}
    clip_names = _linear_names(getattr(pipe, "text_encoder", None))
    clip_underscore = {n.replace(".", "_"): n for n in clip_names}
    out: dict[str, dict[str, LoraPair]] = {"transformer": {}, "text_encoder": {}}
    # 1. Group the tensors by module.
    for module, roles in _grouped(file, tensors).items():
        # 2. Which model and which module: the DiT's BFL Linears, or CLIP's.
        target = _bfl_target(module, dit_parts, by_underscore, clip_names, clip_underscore)
        if target is None:
            raise LoraError(f"{file} is not a LoRA for this FLUX model: it changes '{module}', which the model does "
                            f"not have (a LoRA for another model, e.g. SDXL?).")
        component, name = target
        down, up, scale = roles["down"], roles["up"], _scale(roles)
        if component == "text_encoder":
            out["text_encoder"][name] = LoraPair(down, up, scale)
            continue
        # 3. A fused BFL Linear: the up-matrix splits along the output rows of its diffusers parts.
        if name in SWAPPED_HALVES:
            up = swap_halves(up)
        for d_name, r0, r1 in dit_parts[name]:
            part = up if r1 < 0 else up[r0:r1]
            if r1 >= 0 and part.shape[0] != r1 - r0:
                raise LoraError(f"{file} was made for a FLUX model of other widths ('{module}' has {up.shape[0]} "
                                f"outputs): it is not a LoRA for this model.")
            out["transformer"][d_name] = LoraPair(down, part.contiguous(), scale)
    return out


def _bfl_target(module: str, dit_parts, by_underscore, clip_names, clip_underscore) -> tuple[str, str] | None:
    for prefix in _CLIP_PREFIXES:
        if module.startswith(prefix):
            rest = module[len(prefix):]
            name = rest if rest in clip_names else clip_underscore.get(rest)
            return ("text_encoder", name) if name else None
    for prefix in _BFL_PREFIXES:
        module = module.removeprefix(prefix)
    name = module if module in dit_parts else by_underscore.get(module)
    return ("transformer", name) if name else None


def _grouped(file: str, tensors: dict[str, torch.Tensor]) -> dict[str, dict]:
    groups: dict[str, dict] = {}
    for key, t in tensors.items():
        split = _split_key(key)
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
    return groups


def _scale(roles: dict) -> float:
    alpha = roles.get("alpha")
    if alpha is None:
        return 1.0
    return float(alpha.float().item()) / roles["down"].shape[0]


def _linear_names(model) -> set[str]:
    if model is None:
        return set()
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


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
        component, _, name = module.partition(".")
        if component not in COMPONENTS:
            component, name = "transformer", module
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

def _checked(file: str, model, component: str, module: str, pair: LoraPair) -> LoraPair:
    """The pair in the compute dtype, after checking that the module exists and has the pair's widths."""
    try:
        target = model.get_submodule(module)
    except AttributeError:
        raise LoraError(f"{file} is not a LoRA for this model: it changes '{module}' of the {component}, which "
                        f"this model does not have.") from None
    fan_in, fan_out = getattr(target, "in_features", None), getattr(target, "out_features", None)
    if fan_in is None or fan_out is None:
        raise LoraError(f"{file} changes '{module}' of the {component}, which is not a linear layer.")
    down, up = pair.down, pair.up
    if down.dim() != 2 or up.dim() != 2 or down.shape[0] != up.shape[1]:
        raise LoraError(f"{file} is damaged: '{module}' has matrices of shapes {tuple(down.shape)} and "
                        f"{tuple(up.shape)}.")
    if down.shape[1] != fan_in or up.shape[0] != fan_out:
        raise LoraError(f"{file} was made for another model: '{module}' is {fan_in}→{fan_out} here, the LoRA's "
                        f"is {down.shape[1]}→{up.shape[0]}.")
    if not (torch.isfinite(down).all() and torch.isfinite(up).all()):
        raise LoraError(f"{file} is damaged: '{module}' holds NaN or infinite values.")
    return LoraPair(down.to(DTYPE).contiguous(), up.to(DTYPE).contiguous(), pair.scale)
