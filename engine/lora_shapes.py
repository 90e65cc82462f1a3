"""Does a LoRA fit the model? The widths of every Linear a LoRA may change, and the one check of a pair's shapes
against them. No torch: the same check runs twice.

- Before a job is queued, on the file's safetensors header only (shapes, no tensor data):
  `engine.lora_files.check_lora_header(path, widths)`, through `LoraLibrary.check` (its verdict kept per path, size
  and mtime) for /imagine, the web console, `generate --lora` and every button that makes a LoRA job again. The
  widths come from the configs the engine loads the model with (`engine.model_sizes.model_widths`:
  `transformer/config.json` and `text_encoder/config.json` of the model folder, the base folder of a single-file
  DiT, or tiny-random's folder).
- When the job runs, on the converted pairs (engine/lora_convert.py), the widths read from the loaded modules.

Both map a file's tensor names to the model's modules the same way (`split_key`, `is_bfl_layout`, `bfl_target`),
check a fused BFL layer's rows (`check_fused_rows`) and each pair (`check_pair`), so a LoRA refused when the job
would run is refused at admission with the same words. The header check covers the layouts fluxbot names itself:
kohya / BFL / ComfyUI (with their CLIP part), the mixed `lora_transformer_` layout (kohya-style names of diffusers'
modules) and diffusers / PEFT; XLabs is converted by diffusers' loader from the tensors, so its widths are checked
when the job runs.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from engine.bfl_keys import bfl_linear_parts
from engine.lora_errors import LoraError

log = logging.getLogger(__name__)

COMPONENTS = ("transformer", "text_encoder")          # the models a LoRA may change (T5 is refused)
PAIR_SUFFIXES = {"lora_down.weight": "down", "lora_up.weight": "up", "lora_A.weight": "down",
                 "lora_B.weight": "up", "down.weight": "down", "up.weight": "up", "alpha": "alpha"}
BFL_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "lora_unet_")
MIXED_PREFIX = "lora_transformer_"   # kohya-style names of diffusers' DiT modules (`…transformer_blocks_0_attn_to_q`)
CLIP_PREFIXES = ("lora_te1_", "lora_te_", "text_encoders.clip_l.transformer.")
BFL_ROOTS = ("double_blocks", "single_blocks", "img_in", "txt_in", "time_in", "vector_in", "guidance_in",
             "final_layer")
TIMESTEP_CHANNELS = 256    # FluxTransformer2DModel's sinusoidal time / guidance projection
PAIR_BYTES = 2             # the pairs are kept and applied in bf16 (engine/lora_convert.DTYPE)
# FLUX.1-dev's DiT and CLIP-L configs (their Linears' widths): the planner's reference without files.
FLUX_DEV_DIT = {"attention_head_dim": 128, "guidance_embeds": True, "in_channels": 64, "joint_attention_dim": 4096,
                "num_attention_heads": 24, "num_layers": 19, "num_single_layers": 38, "patch_size": 1,
                "pooled_projection_dim": 768}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12}


@dataclass(frozen=True)
class ModelWidths:
    """(in, out) of every Linear a LoRA may change, by component and diffusers module name (CLIP's as `clip_name`
    names them), and the DiT's BFL
    Linears as their diffusers parts (`bfl_keys.bfl_linear_parts`). `ident` names the configs they came from."""
    linears: Mapping[str, Mapping[str, tuple[int, int]]]
    bfl_parts: Mapping[str, Sequence[tuple[str, int, int]]] = field(default_factory=dict)
    ident: str = ""

    def of(self, component: str, module: str) -> tuple[int, int] | None:
        return self.linears.get(component, {}).get(module)

    @cached_property
    def underscored(self) -> dict[str, dict[str, str]]:
        """kohya's names (dots as underscores) → the BFL Linear ("transformer"), CLIP module ("text_encoder") or,
        for the mixed layout's names, the DiT's diffusers Linear ("mixed")."""
        return {"transformer": {b.replace(".", "_"): b for b in self.bfl_parts},
                "text_encoder": {n.replace(".", "_"): n for n in self.linears.get("text_encoder", {})},
                "mixed": {n.replace(".", "_"): n for n in self.linears.get("transformer", {})}}

    def dit_parts(self, name: str) -> Sequence[tuple[str, int, int]]:
        """The diffusers parts of a DiT module `bfl_target` named: a BFL Linear's (its up-matrix split by rows), or
        a diffusers Linear (the mixed layout) as itself, whole."""
        return self.bfl_parts.get(name) or ((name, 0, -1),)

    @property
    def rank_bytes(self) -> int:
        """Bytes one rank of LoRA on every Linear takes as the engine keeps it (a bf16 down row and up column)."""
        return PAIR_BYTES * sum(i + o for modules in self.linears.values() for i, o in modules.values())


# ------------------------------------------------------------------------------------------ the model's widths

def dit_linears(config: Mapping) -> dict[str, tuple[int, int]]:
    """Every Linear of diffusers' FluxTransformer2DModel built from `config`, as (in, out) (a test checks this
    against the real module, the tiny model's and FLUX.1-dev's)."""
    inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    mlp = int(inner * float(config.get("mlp_ratio", 4.0)))
    out_channels = config.get("out_channels") or config["in_channels"]
    patch = int(config.get("patch_size", 1))
    # 1. The embedders and the output layers.
    out = {"time_text_embed.timestep_embedder.linear_1": (TIMESTEP_CHANNELS, inner),
           "time_text_embed.timestep_embedder.linear_2": (inner, inner),
           "time_text_embed.text_embedder.linear_1": (int(config["pooled_projection_dim"]), inner),
           "time_text_embed.text_embedder.linear_2": (inner, inner),
           "context_embedder": (int(config["joint_attention_dim"]), inner),
           "x_embedder": (int(config["in_channels"]), inner),
           "norm_out.linear": (inner, 2 * inner),
           "proj_out": (inner, patch * patch * int(out_channels))}
    if config.get("guidance_embeds", False):
        out["time_text_embed.guidance_embedder.linear_1"] = (TIMESTEP_CHANNELS, inner)
        out["time_text_embed.guidance_embedder.linear_2"] = (inner, inner)
    # 2. The double blocks (image and text streams) and the single blocks.
    for i in range(int(config["num_layers"])):
        b = f"transformer_blocks.{i}."
        out.update({b + "norm1.linear": (inner, 6 * inner), b + "norm1_context.linear": (inner, 6 * inner)})
        for name in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
            out[b + "attn." + name] = (inner, inner)
        for ff in ("ff", "ff_context"):
            out.update({f"{b}{ff}.net.0.proj": (inner, mlp), f"{b}{ff}.net.2": (mlp, inner)})
    for i in range(int(config["num_single_layers"])):
        b = f"single_transformer_blocks.{i}."
        out.update({b + "norm.linear": (inner, 3 * inner), b + "proj_mlp": (inner, mlp),
                    b + "proj_out": (inner + mlp, inner)})
        for name in ("to_q", "to_k", "to_v"):
            out[b + "attn." + name] = (inner, inner)
    return out


def clip_linears(config: Mapping) -> dict[str, tuple[int, int]]:
    """Every Linear of transformers' CLIPTextModel built from `config` (a CLIPTextConfig, or a CLIPConfig's
    `text_config`), as (in, out), named as `clip_name` names them."""
    config = config.get("text_config", config)
    hidden, inter = int(config["hidden_size"]), int(config["intermediate_size"])
    out = {}
    for i in range(int(config["num_hidden_layers"])):
        b = f"encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[f"{b}self_attn.{name}"] = (hidden, hidden)
        out.update({b + "mlp.fc1": (hidden, inter), b + "mlp.fc2": (inter, hidden)})
    return out


def clip_name(name: str) -> str:
    """A CLIP module's name without `text_model.`: transformers 4 nests CLIPTextModel's layers under `text_model`,
    transformers 5 does not, and LoRA files name them either way (kohya's `lora_te1_text_model_encoder_…`)."""
    return name.removeprefix("text_model.").removeprefix("text_model_")


def widths_from_configs(dit_config: Mapping, clip_config: Mapping | None = None, ident: str = "") -> ModelWidths:
    linears = {"transformer": dit_linears(dit_config)}
    if clip_config is not None:
        linears["text_encoder"] = clip_linears(clip_config)
    return ModelWidths(linears=linears, bfl_parts=bfl_linear_parts(dit_config), ident=ident)


# ------------------------------------------------------------------------------------------- names → modules

def split_key(key: str) -> tuple[str, str] | None:
    """(module, "down" | "up" | "alpha") of a LoRA tensor name, None for anything else."""
    for suffix, role in PAIR_SUFFIXES.items():
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], role
    return None


def is_bfl_layout(keys: Iterable[str]) -> bool:
    """kohya / BFL names (sd-scripts' `lora_unet_…`, ComfyUI's `diffusion_model.double_blocks…`) and the mixed
    `lora_transformer_…` layout (kohya-style names of diffusers' modules, read the same way); not XLabs (BFL block
    names too, with `processor`), which diffusers converts."""
    keys = list(keys)
    if any(is_converted_by_diffusers(k) for k in keys):
        return False
    if any(k.startswith(("lora_unet_", MIXED_PREFIX)) for k in keys):
        return True                   # sd-scripts: FLUX's blocks, or another model's (refused by name later)
    for k in keys:
        stripped = k
        for prefix in BFL_PREFIXES:
            stripped = stripped.removeprefix(prefix)
        if stripped.startswith(BFL_ROOTS):
            return True
    return False


def is_converted_by_diffusers(key: str) -> bool:
    """XLabs' names, which only diffusers' loader maps (from the tensors)."""
    return "processor" in key


def bfl_target(module: str, widths: ModelWidths) -> tuple[str, str] | None:
    """("text_encoder", CLIP module) or ("transformer", BFL Linear, or a diffusers Linear for the mixed layout's
    `lora_transformer_` names: `widths.dit_parts` gives either's parts) of a kohya/BFL module name; None when the
    model has no such layer."""
    if module.startswith(MIXED_PREFIX):
        name = widths.underscored["mixed"].get(module[len(MIXED_PREFIX):])
        return ("transformer", name) if name else None
    for prefix in CLIP_PREFIXES:
        if module.startswith(prefix):
            rest = clip_name(module[len(prefix):])
            clip = widths.linears.get("text_encoder", {})
            name = rest if rest in clip else widths.underscored["text_encoder"].get(rest)
            return ("text_encoder", name) if name else None
    for prefix in BFL_PREFIXES:
        module = module.removeprefix(prefix)
    name = module if module in widths.bfl_parts else widths.underscored["transformer"].get(module)
    return ("transformer", name) if name else None


def diffusers_target(module: str) -> tuple[str, str]:
    """(component, module) of a diffusers/PEFT name; names without a component belong to the DiT."""
    component, _, name = module.partition(".")
    if component == "text_encoder":
        return component, clip_name(name)
    return (component, name) if component in COMPONENTS else ("transformer", module)


def not_in_model(file: str, module: str) -> LoraError:
    return LoraError(f"{file} is not a LoRA for this FLUX model: it changes '{module}', which the model does not "
                     f"have (a LoRA for another model, e.g. SDXL?).")


# ------------------------------------------------------------------------------------------------ the check

def check_fused_rows(file: str, module: str, up_rows: int, parts: Sequence[tuple[str, int, int]]) -> None:
    """A fused BFL Linear (q/k/v, a single block's linear1) splits its up-matrix by rows: it must have them all."""
    if parts and parts[-1][2] >= 0 and up_rows != parts[-1][2]:
        raise LoraError(f"{file} was made for a FLUX model of other widths ('{module}' has {up_rows} outputs, this "
                        f"model's has {parts[-1][2]}): it is not a LoRA for this model.")


def check_pair(file: str, component: str, module: str, down_shape: Sequence[int], up_shape: Sequence[int],
               widths: ModelWidths) -> None:
    """LoraError unless the model has `module` and the pair (down: rank × in, up: out × rank) has its widths."""
    fits = widths.of(component, module)
    if fits is None:
        raise LoraError(f"{file} is not a LoRA for this model: it changes '{module}' of the {component}, which "
                        f"this model does not have.")
    if len(down_shape) != 2 or len(up_shape) != 2 or down_shape[0] != up_shape[1]:
        raise LoraError(f"{file} is damaged: '{module}' has matrices of shapes {tuple(down_shape)} and "
                        f"{tuple(up_shape)}.")
    fan_in, fan_out = fits
    if down_shape[1] != fan_in or up_shape[0] != fan_out:
        raise LoraError(f"{file} was made for another model: '{module}' is {fan_in}→{fan_out} here, the LoRA's "
                        f"is {down_shape[1]}→{up_shape[0]}.")


def check_fits(file: str, shapes: Mapping[str, Sequence[int]], widths: ModelWidths) -> int:
    """The file's pairs (tensor name → shape, from its header) against the model's widths, as the job's run would
    check them; LoraError naming the file and what does not fit. Returns the bytes its pairs take as the engine
    keeps them (for `check_reserve`). Layouts only diffusers' loader maps are not checked here, and their bytes are
    the file's pairs' (the run counts the converted ones)."""
    # 1. The pairs by module, in name order (tensors that are not pairs are the job's run's to refuse).
    groups: dict[str, dict[str, Sequence[int]]] = {}
    for key, shape in shapes.items():
        split = split_key(key)
        if split is not None:
            groups.setdefault(split[0], {})[split[1]] = shape
    pairs = {m: groups[m] for m in sorted(groups) if "down" in groups[m] and "up" in groups[m]}
    if any(is_converted_by_diffusers(k) for k in shapes):
        return sum(_pair_bytes(roles["down"], roles["up"]) for roles in pairs.values())
    # 2. Each pair against the module it changes, in the run's order: the names (and a fused layer's rows), then
    #    the widths, the DiT's first.
    checks: dict[str, list[tuple[str, Sequence[int], Sequence[int]]]] = {c: [] for c in COMPONENTS}
    bfl = is_bfl_layout(shapes)
    for module, roles in pairs.items():
        down, up = roles["down"], roles["up"]
        if not bfl:
            component, name = diffusers_target(module)
            checks.setdefault(component, []).append((name, down, up))
            continue
        target = bfl_target(module, widths)
        if target is None:
            raise not_in_model(file, module)
        component, name = target
        if component == "text_encoder":
            checks[component].append((name, down, up))
            continue
        parts = widths.dit_parts(name)
        if len(up) == 2:
            check_fused_rows(file, module, up[0], parts)
        checks[component] += [(d_name, down, up if r1 < 0 else (r1 - r0, *up[1:])) for d_name, r0, r1 in parts]
    for component, found in checks.items():
        for name, down, up in found:
            check_pair(file, component, name, down, up, widths)
    return sum(_pair_bytes(down, up) for found in checks.values() for _, down, up in found)


def check_reserve(needs: Sequence[tuple[str, int]], widths: ModelWidths, rank: int) -> None:
    """LoraError when a job's LoRAs ((name, bytes of its pairs) each; strength-0 ones left out) need more than the
    room every placement plan keeps for them: `rank` ([engine] lora_reserve_rank) on every Linear of the model."""
    need, room = sum(n for _, n in needs), rank * widths.rank_bytes
    if need <= room:
        return
    what = f"The LoRA '{needs[0][0]}' needs" if len(needs) == 1 else f"These {len(needs)} LoRAs need"
    if rank == 0:
        raise LoraError(f"{what} {_size(need)} of GPU memory, and this bot keeps none for LoRAs "
                        f"([engine] lora_reserve_rank = 0): LoRAs are off.")
    raise LoraError(f"{what} {_size(need)} of GPU memory; this bot keeps {_size(room)} for a job's LoRAs (rank {rank} "
                    f"on every layer of the model, [engine] lora_reserve_rank). Use fewer LoRAs or ones of a lower "
                    f"rank.")


def _pair_bytes(down: Sequence[int], up: Sequence[int]) -> int:
    return PAIR_BYTES * (_numel(down) + _numel(up))


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _size(nbytes: int) -> str:
    if nbytes >= 2 ** 30:
        return f"{nbytes / 2 ** 30:.2f} GiB"
    return f"{nbytes / 2 ** 20:.0f} MiB" if nbytes >= 2 ** 20 else f"{max(nbytes // 1024, 1)} KiB"
