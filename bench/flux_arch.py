"""The model architectures the benches build with random weights: FLUX.1-dev's (CLIP-L, T5-XXL, the 12B DiT, the VAE)
and a tiny one of the same shape for CPU smoke runs. One table, read by bench/engine_bench.py (built in memory) and
bench/plan_bench.py (written to disk in the release's layouts; bench/peer_bench.py and bench/lora_bench.py through
it). No torch: the keyword arguments of diffusers' and transformers' constructors, nothing else."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    dit: dict            # FluxTransformer2DModel(**dit)
    clip: dict           # CLIPTextConfig(**clip)
    t5: dict             # T5Config(**t5)
    vae: dict            # AutoencoderKL(**vae)
    t5_shards: int = 2   # T5's safetensors shards on disk, as the release has them (plan_bench's writer)


FLUX_DEV = Arch(
    dit=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
             num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
             axes_dims_rope=[16, 56, 56]),
    clip=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
              num_hidden_layers=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu"),
    t5=dict(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
            feed_forward_proj="gated-gelu", is_encoder_decoder=False, dense_act_fn="gelu_new", dropout_rate=0.1,
            relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6),
    vae=dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
             up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
             latent_channels=16, norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
             use_quant_conv=False, use_post_quant_conv=False))
TINY = Arch(
    dit=dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=3, attention_head_dim=16,
             num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
             axes_dims_rope=[4, 6, 6]),
    clip=dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
              max_position_embeddings=77, projection_dim=32, hidden_act="gelu"),
    t5=dict(vocab_size=1000, d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2, feed_forward_proj="gated-gelu",
            is_encoder_decoder=False, relative_attention_num_buckets=8, dropout_rate=0.0),
    vae=dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
             up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 8, 8, 8], layers_per_block=1,
             latent_channels=16, norm_num_groups=4, sample_size=64, scaling_factor=0.3611, shift_factor=0.1159,
             use_quant_conv=False, use_post_quant_conv=False))
