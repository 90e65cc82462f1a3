"""The tiny FLUX pipeline: real FLUX.1 architecture and latent layout, random weights, built offline.

It exists for tests and for checking a Discord set-up without 30 GB of weights (`[engine] model =
"tiny-random"`). It is built once from configs with a fixed seed, saved with `save_pretrained` (~0.6 MB),
and loaded back through the same code that loads a real diffusers FLUX.1-dev folder.

This module also holds the key converters between diffusers' FluxTransformer2DModel layout and the
original BFL layout (`double_blocks.*`, `single_blocks.*`) used by single-file checkpoints such as
flux1-dev.safetensors and majicflus_v134.safetensors. diffusers' own converter hard-codes FLUX.1's widths
(3072), so fluxbot converts with widths read from the model config; both directions live here.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import torch

log = logging.getLogger(__name__)

TINY_SEED = 0
# Files whose presence means a saved tiny pipeline is complete.
TINY_MARKERS = ("model_index.json", "transformer/config.json", "vae/config.json", "text_encoder/config.json",
                "text_encoder_2/config.json", "tokenizer/tokenizer_config.json", "tokenizer_2/tokenizer_config.json")

_WORDS = ("a cat dog photo of the red blue green on in with sky tree house man woman portrait painting "
          "night day sun moon city forest water fire light dark big small").split()


# ---------------------------------------------------------------------------------------------- building

def build_tiny_pipeline(seed: int = TINY_SEED):
    """A FluxPipeline with the FLUX.1 layout and tiny random weights (float32, eval mode)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    # 1. Tokenizers from plain vocabularies (no downloads).
    clip_tok, t5_tok = _tiny_tokenizers()

    # 2. Models, each seeded on its own so that adding one does not change the others.
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 6, 6],
        guidance_embeds=True)
    torch.manual_seed(seed + 1)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32, hidden_act="gelu",
        bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
        pad_token_id=clip_tok.pad_token_id))
    torch.manual_seed(seed + 2)
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="gated-gelu",
        decoder_start_token_id=0, pad_token_id=t5_tok.pad_token_id, eos_token_id=t5_tok.eos_token_id))
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, norm_num_groups=4, layers_per_block=1,
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, shift=3.0,
        use_dynamic_shifting=True)

    # 3. Random weights are small; keep the outputs in a sane range by scaling the transformer's.
    with torch.no_grad():
        for p in transformer.parameters():
            p.mul_(0.5)
    for m in (transformer, clip, t5, vae):
        m.eval()
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok,
                        text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer)


def _tiny_tokenizers():
    """A CLIP BPE tokenizer and a T5 Unigram tokenizer over a small fixed vocabulary."""
    from transformers import CLIPTokenizerFast, T5TokenizerFast

    # 1. CLIP: byte-level-free BPE over single characters plus whole words, with "</w>" word ends.
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"))
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for w in _WORDS:  # merge each word left to right so whole words become one token
        piece = w[0]
        for i, c in enumerate(w[1:], start=1):
            right = c + "</w>" if i == len(w) - 1 else c
            merges.append((piece, right))
            piece = piece + right
            vocab.setdefault(piece, len(vocab))
    merges = list(dict.fromkeys(merges))
    clip_tok = CLIPTokenizerFast(vocab=vocab, merges=merges, model_max_length=77)

    # 2. T5: Unigram with pad/eos/unk first, like the real T5 vocabulary.
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -3.0) for w in _WORDS]
    pieces += [(c, -5.0) for c in chars]
    t5_tok = T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)
    return clip_tok, t5_tok


def save_tiny(path: str | os.PathLike, seed: int = TINY_SEED) -> Path:
    """Build the tiny pipeline and save it to `path` atomically (a temp folder renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pipe = build_tiny_pipeline(seed)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=path.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("built the tiny-random FLUX pipeline in %s", path)
    return path


def ensure_tiny(models_dir: str | os.PathLike) -> Path:
    """The saved tiny pipeline under `models_dir/tiny-random`, built first if missing or incomplete."""
    path = Path(models_dir) / "tiny-random"
    if not all((path / m).exists() for m in TINY_MARKERS):
        save_tiny(path)
    return path


# ----------------------------------------------------------------------------------- BFL key converters

def _widths(config) -> tuple[int, int]:
    inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    mlp = int(inner * float(config.get("mlp_ratio", 4.0)))
    return inner, mlp


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """BFL's final modulation is (shift, scale); diffusers' is (scale, shift). Swapping is its own inverse."""
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
