"""Real LoRA files for the tiny model in every layout fluxbot reads, generated (never downloaded).

All layouts hold the same LoRA: the demo LoRA's pairs (kohya, alpha = rank, so scale 1) written the way each tool
writes them, so every file must give the same deltas and the same pixels:
- `kohya`: sd-scripts' `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight` + `.alpha` (engine/tiny.py's demo);
- `comfy`: ComfyUI's `diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight` / `lora_B.weight`;
- `peft`: diffusers/PEFT's `transformer.transformer_blocks.0.attn.to_q.lora_A.weight`, fused layers split;
- `xlabs`: XLabs' `double_blocks.0.processor.qkv_lora1.down.weight` (attention of the double blocks only);
- `mixed`: kohya-style names of diffusers' modules, `lora_transformer_transformer_blocks_0_attn_to_q.lora_down.weight`
  + `.alpha` (every Linear, as `peft`'s pairs);
- `kohya_te`: the kohya file plus a CLIP part (`lora_te1_text_model_encoder_layers_0_self_attn_q_proj`).

And one that must be refused (`write(pipe, "other_widths", path)`): a kohya LoRA trained for a FLUX of other widths
(the tiny DiT with one more attention head), the same names with other shapes.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.bfl_keys import bfl_linear_parts
from engine.tiny import demo_lora_tensors, random_lora_tensors

LAYOUTS = ("kohya", "comfy", "peft", "xlabs", "mixed", "kohya_te")
# XLabs' attention processors: (processor name, BFL Linear)
_XLABS = (("qkv_lora1", "img_attn.qkv"), ("qkv_lora2", "txt_attn.qkv"), ("proj_lora1", "img_attn.proj"),
          ("proj_lora2", "txt_attn.proj"))


def kohya(dit) -> dict[str, torch.Tensor]:
    return demo_lora_tensors(dit)


def comfy(dit) -> dict[str, torch.Tensor]:
    out = {}
    for key, t in kohya(dit).items():
        module, _, suffix = key.partition(".")
        bfl = _bfl_name(dit, module)
        suffix = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight"}.get(suffix, suffix)
        out[f"diffusion_model.{bfl}.{suffix}"] = t
    return out


def peft(dit) -> dict[str, torch.Tensor]:
    """diffusers' layout: one pair per diffusers Linear (a fused BFL up-matrix split by rows, the down shared)."""
    src, parts = kohya(dit), bfl_linear_parts(dit.config)
    out = {}
    for key in [k for k in src if k.endswith(".lora_down.weight")]:
        module = key.removesuffix(".lora_down.weight")
        down, up = src[key], src[module + ".lora_up.weight"]
        for name, r0, r1 in parts[_bfl_name(dit, module)]:
            out[f"transformer.{name}.lora_A.weight"] = down.clone()
            out[f"transformer.{name}.lora_B.weight"] = (up if r1 < 0 else up[r0:r1]).clone()
    return out


def xlabs(dit) -> dict[str, torch.Tensor]:
    src, out = kohya(dit), {}
    for i in range(dit.config["num_layers"]):
        for proc, bfl in _XLABS:
            module = "lora_unet_" + f"double_blocks.{i}.{bfl}".replace(".", "_")
            out[f"double_blocks.{i}.processor.{proc}.down.weight"] = src[module + ".lora_down.weight"]
            out[f"double_blocks.{i}.processor.{proc}.up.weight"] = src[module + ".lora_up.weight"]
    return out


def mixed(dit) -> dict[str, torch.Tensor]:
    """`peft`'s pairs under `lora_transformer_` + the diffusers module's name with underscores, alpha = rank."""
    out = {}
    for key, t in peft(dit).items():
        module, _, role = key.removeprefix("transformer.").rpartition(".lora_")
        name = "lora_transformer_" + module.replace(".", "_")
        if role == "A.weight":
            out[name + ".lora_down.weight"] = t
            out[name + ".alpha"] = torch.tensor(float(t.shape[0]))
        else:
            out[name + ".lora_up.weight"] = t
    return out


def kohya_te(dit, clip) -> dict[str, torch.Tensor]:
    out = kohya(dit)
    gen = torch.Generator().manual_seed(5)
    for name, m in clip.named_modules():
        if isinstance(m, torch.nn.Linear) and ".layers.0." in name and name.endswith(("q_proj", "fc1")):
            key = "lora_te1_" + name.replace(".", "_")
            out[key + ".lora_down.weight"] = torch.randn(2, m.in_features, generator=gen)
            out[key + ".lora_up.weight"] = torch.randn(m.out_features, 2, generator=gen)
            out[key + ".alpha"] = torch.tensor(2.0)
    return out


def other_widths(dit) -> dict[str, torch.Tensor]:
    """A kohya LoRA for `dit`'s architecture with one more attention head (every width differs), rank 4."""
    from diffusers import FluxTransformer2DModel

    config = {k: v for k, v in dit.config.items() if not k.startswith("_")}
    config["num_attention_heads"] = int(config["num_attention_heads"]) + 1
    with torch.device("meta"):
        wider = FluxTransformer2DModel.from_config(config)
    return random_lora_tensors(wider, 4, seed=3)


def write(pipe, layout: str, path: Path) -> Path:
    """The LoRA in `layout` (or `other_widths`) for `pipe`'s tiny DiT (and CLIP), saved as safetensors at `path`."""
    dit = pipe.transformer
    tensors = {"kohya": lambda: kohya(dit), "comfy": lambda: comfy(dit), "peft": lambda: peft(dit),
               "xlabs": lambda: xlabs(dit), "mixed": lambda: mixed(dit),
               "kohya_te": lambda: kohya_te(dit, pipe.text_encoder),
               "other_widths": lambda: other_widths(dit)}[layout]()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"ss_output_name": path.stem})
    return path


def _bfl_name(dit, underscored: str) -> str:
    names = {b.replace(".", "_"): b for b in bfl_linear_parts(dit.config)}
    return names[underscored.removeprefix("lora_unet_")]
