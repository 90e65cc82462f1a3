"""The tiny FLUX pipeline: real FLUX.1 architecture and latent layout, random weights, built offline.

It exists for tests and for checking a Discord set-up without 30 GB of weights (`[engine] model =
"tiny-random"`). It is built once from configs with a fixed seed, saved with `save_pretrained` (~0.6 MB),
and loaded back through the same code that loads a real diffusers FLUX.1-dev folder.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from engine.bfl_keys import bfl_linear_parts
from engine.lora_files import DEMO_LORA

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


# ---------------------------------------------------------------------------------------------- demo LoRA

DEMO_RANK = 4


def demo_lora_tensors(dit, seed: int = TINY_SEED + 10) -> dict[str, torch.Tensor]:
    """The demo LoRA of the tiny DiT `dit`: rank 4 on every Linear of its blocks, large enough to change the image
    visibly."""
    return random_lora_tensors(dit, DEMO_RANK, seed=seed, std=0.5)


def random_lora_tensors(dit, rank: int, *, seed: int = 0, std: float = 0.5) -> dict[str, torch.Tensor]:
    """A LoRA with random weights (normal, `std`) in kohya's BFL layout (the most common FLUX LoRA layout) on every
    Linear of the blocks of `dit` (any FLUX width; a model on the meta device will do), alpha = rank."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for bfl, parts in bfl_linear_parts(dit.config).items():
        if not bfl.startswith(("double_blocks.", "single_blocks.")):
            continue
        layers = [dit.get_submodule(name) for name, _, _ in parts]
        fan_in, fan_out = layers[0].in_features, sum(m.out_features for m in layers)
        key = "lora_unet_" + bfl.replace(".", "_")
        out[key + ".lora_down.weight"] = torch.randn(rank, fan_in, generator=gen) * std
        out[key + ".lora_up.weight"] = torch.randn(fan_out, rank, generator=gen) * std
        out[key + ".alpha"] = torch.tensor(float(rank))
    return out


def ensure_demo_lora(loras_dir: str | os.PathLike, dit) -> Path:
    """`loras_dir/tiny-random-demo.safetensors`, written once (atomically) for the tiny DiT `dit`."""
    from safetensors.torch import save_file

    path = Path(loras_dir) / f"{DEMO_LORA}.safetensors"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(demo_lora_tensors(dit), str(tmp), metadata={
        "ss_output_name": DEMO_LORA, "modelspec.trigger_phrase": "tiny demo",
        "modelspec.title": "fluxbot's demo LoRA for tiny-random (random weights)"})
    os.replace(tmp, path)
    log.info("wrote the demo LoRA %s", path)
    return path
