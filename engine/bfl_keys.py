"""The DiT's tensor names: diffusers' FluxTransformer2DModel layout <-> the original BFL layout.

Single-file checkpoints such as flux1-dev.safetensors and majicflus_v134.safetensors name their tensors as
Black Forest Labs did (`double_blocks.*`, `single_blocks.*`, fused q/k/v); diffusers splits and renames them.
diffusers' own converter hard-codes FLUX.1's widths (3072), so fluxbot converts with widths read from the model
config (the tiny model's too); both directions live here. `iter_bfl_to_diffusers` reads one source tensor at a
time, so a 24 GB file is converted without holding it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping

if TYPE_CHECKING:   # torch only where tensors are joined: the name tables (bfl_linear_parts) are torch-free
    import torch


def _widths(config) -> tuple[int, int]:
    inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    mlp = int(inner * float(config.get("mlp_ratio", 4.0)))
    return inner, mlp


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """BFL's final modulation is (shift, scale); diffusers' is (scale, shift). Swapping is its own inverse."""
    import torch

    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _simple_pairs(num_layers: int, num_single: int, guidance: bool) -> list[tuple[str, str]]:
    """(diffusers name, BFL name) for every tensor that maps one to one (without .weight/.bias)."""
    pairs = [("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"),
             ("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"),
             ("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"),
             ("time_text_embed.text_embedder.linear_2", "vector_in.out_layer"),
             ("context_embedder", "txt_in"), ("x_embedder", "img_in"), ("proj_out", "final_layer.linear")]
    if guidance:
        pairs += [("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
                  ("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer")]
    for i in range(num_layers):
        d, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        pairs += [(d + "norm1.linear", b + "img_mod.lin"), (d + "norm1_context.linear", b + "txt_mod.lin"),
                  (d + "ff.net.0.proj", b + "img_mlp.0"), (d + "ff.net.2", b + "img_mlp.2"),
                  (d + "ff_context.net.0.proj", b + "txt_mlp.0"), (d + "ff_context.net.2", b + "txt_mlp.2"),
                  (d + "attn.to_out.0", b + "img_attn.proj"), (d + "attn.to_add_out", b + "txt_attn.proj")]
    for i in range(num_single):
        d, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        pairs += [(d + "norm.linear", b + "modulation.lin"), (d + "proj_out", b + "linear2")]
    return pairs


def _norm_pairs(num_layers: int, num_single: int) -> list[tuple[str, str]]:
    """(diffusers weight, BFL scale) of the RMS q/k norms."""
    pairs = []
    for i in range(num_layers):
        d, b = f"transformer_blocks.{i}.attn.", f"double_blocks.{i}."
        pairs += [(d + "norm_q.weight", b + "img_attn.norm.query_norm.scale"),
                  (d + "norm_k.weight", b + "img_attn.norm.key_norm.scale"),
                  (d + "norm_added_q.weight", b + "txt_attn.norm.query_norm.scale"),
                  (d + "norm_added_k.weight", b + "txt_attn.norm.key_norm.scale")]
    for i in range(num_single):
        d, b = f"single_transformer_blocks.{i}.attn.", f"single_blocks.{i}."
        pairs += [(d + "norm_q.weight", b + "norm.query_norm.scale"),
                  (d + "norm_k.weight", b + "norm.key_norm.scale")]
    return pairs


def diffusers_to_bfl(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A FluxTransformer2DModel state dict in the original BFL key layout (inverse of `bfl_to_diffusers`)."""
    import torch

    n, ns, guidance = config["num_layers"], config["num_single_layers"], config.get("guidance_embeds", False)
    out: dict[str, torch.Tensor] = {}
    # 1. One-to-one tensors.
    for d, b in _simple_pairs(n, ns, guidance):
        for suffix in (".weight", ".bias"):
            out[b + suffix] = state[d + suffix]
    for d, b in _norm_pairs(n, ns):
        out[b] = state[d]
    # 2. Fused q/k/v of the double blocks.
    for i in range(n):
        d, b = f"transformer_blocks.{i}.attn.", f"double_blocks.{i}."
        for suffix in (".weight", ".bias"):
            out[f"{b}img_attn.qkv{suffix}"] = torch.cat([state[d + p + suffix] for p in ("to_q", "to_k", "to_v")])
            out[f"{b}txt_attn.qkv{suffix}"] = torch.cat(
                [state[d + p + suffix] for p in ("add_q_proj", "add_k_proj", "add_v_proj")])
    # 3. Fused q/k/v/mlp of the single blocks.
    for i in range(ns):
        d, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for suffix in (".weight", ".bias"):
            parts = [state[d + p + suffix] for p in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]
            out[f"{b}linear1{suffix}"] = torch.cat(parts)
    # 4. The final modulation, halves swapped.
    for suffix in (".weight", ".bias"):
        out[f"final_layer.adaLN_modulation.1{suffix}"] = _swap_halves(state[f"norm_out.linear{suffix}"])
    return out


def bfl_to_diffusers(checkpoint: Mapping[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A BFL-layout DiT state dict (optionally prefixed `model.diffusion_model.`) in diffusers' layout.

    Raises KeyError naming the first missing tensor, ValueError on leftover (unknown) tensors.
    """
    src = {k.removeprefix("model.diffusion_model."): k for k in checkpoint}
    return dict(iter_bfl_to_diffusers(lambda key: checkpoint[src[key]] if key in src else _missing(key),
                                      src.keys(), config))


def _missing(key: str):
    raise KeyError(key)


def iter_bfl_to_diffusers(get: Callable[[str], torch.Tensor], keys: Iterable[str], config
                          ) -> Iterator[tuple[str, torch.Tensor]]:
    """(diffusers name, tensor) pairs from a BFL checkpoint, one source tensor read at a time.

    `get(bfl_key)` reads one tensor (keys without the `model.diffusion_model.` prefix), so a loader can
    stream a 24 GB file without holding it; `keys` are the checkpoint's keys, checked at the end for
    leftovers (ValueError). A missing tensor raises KeyError naming it.
    """
    n, ns, guidance = config["num_layers"], config["num_single_layers"], config.get("guidance_embeds", False)
    inner, mlp = _widths(config)
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return get(key)

    # 1. One-to-one tensors.
    for d, b in _simple_pairs(n, ns, guidance):
        for suffix in (".weight", ".bias"):
            yield d + suffix, take(b + suffix)
    for d, b in _norm_pairs(n, ns):
        yield d, take(b)
    # 2. Split fused q/k/v of the double blocks.
    for i in range(n):
        d, b = f"transformer_blocks.{i}.attn.", f"double_blocks.{i}."
        for suffix in (".weight", ".bias"):
            for stream, names in (("img", ("to_q", "to_k", "to_v")), ("txt", ("add_q_proj", "add_k_proj", "add_v_proj"))):
                for name, part in zip(names, take(f"{b}{stream}_attn.qkv{suffix}").split(inner, dim=0)):
                    yield d + name + suffix, part
    # 3. Split fused q/k/v/mlp of the single blocks.
    for i in range(ns):
        d, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for suffix in (".weight", ".bias"):
            parts = take(f"{b}linear1{suffix}").split([inner, inner, inner, mlp], dim=0)
            for name, part in zip(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), parts):
                yield d + name + suffix, part
    # 4. The final modulation, halves swapped.
    for suffix in (".weight", ".bias"):
        yield f"norm_out.linear{suffix}", _swap_halves(take(f"final_layer.adaLN_modulation.1{suffix}"))
    leftover = sorted(set(keys) - used)
    if leftover:
        raise ValueError(f"{len(leftover)} tensors are not part of a FLUX DiT (first: {leftover[0]})")


def bfl_linear_parts(config) -> dict[str, list[tuple[str, int, int]]]:
    """Every Linear of the BFL layout → the diffusers Linears it is made of, as (name, first row, end row) of
    its output rows: one part for a one-to-one layer, three for a fused q/k/v, four for a single block's
    linear1. A LoRA on a BFL Linear (kohya's FLUX LoRAs) splits its up-matrix along the same rows.
    `final_layer.adaLN_modulation.1` is one part whose two halves are swapped (see SWAPPED_HALVES)."""
    n, ns, guidance = config["num_layers"], config["num_single_layers"], config.get("guidance_embeds", False)
    inner, mlp = _widths(config)
    # 1. One-to-one layers; the final modulation too (its halves are swapped, not split).
    parts = {b: [(d, 0, -1)] for d, b in _simple_pairs(n, ns, guidance)}
    parts["final_layer.adaLN_modulation.1"] = [("norm_out.linear", 0, -1)]
    # 2. Fused q/k/v of the double blocks, q/k/v/mlp of the single blocks.
    for i in range(n):
        d, b = f"transformer_blocks.{i}.attn.", f"double_blocks.{i}."
        for stream, names in (("img", ("to_q", "to_k", "to_v")), ("txt", ("add_q_proj", "add_k_proj", "add_v_proj"))):
            parts[f"{b}{stream}_attn.qkv"] = [(d + name, k * inner, (k + 1) * inner) for k, name in enumerate(names)]
    for i in range(ns):
        d = f"single_transformer_blocks.{i}."
        parts[f"single_blocks.{i}.linear1"] = [(d + "attn.to_q", 0, inner), (d + "attn.to_k", inner, 2 * inner),
                                               (d + "attn.to_v", 2 * inner, 3 * inner),
                                               (d + "proj_mlp", 3 * inner, 3 * inner + mlp)]
    return parts


# The BFL Linears whose output halves diffusers stores swapped (BFL's (shift, scale) vs diffusers' (scale, shift)).
SWAPPED_HALVES = frozenset({"final_layer.adaLN_modulation.1"})


def swap_halves(t: torch.Tensor) -> torch.Tensor:
    """A BFL final-modulation tensor (weight, bias or a LoRA's up-matrix) in diffusers' order, and back."""
    return _swap_halves(t)
