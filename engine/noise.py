"""Initial latents: drawn as float32 on the CPU from a seed (the same on any machine), in FLUX's packed layout.

A variation (A1111's "variation seed") blends the seed's noise with a second seed's noise by spherical
interpolation: strength 0 is the parent image exactly, strength 1 is the variation seed's own image.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

LATENT_CHANNELS = 16
VAE_SCALE = 8


def packed_shape(width: int, height: int, channels: int = LATENT_CHANNELS, vae_scale: int = VAE_SCALE) -> tuple[int, int]:
    """(tokens, features) of FLUX's packed latents: 2×2 patches of the (channels, h/8, w/8) latent image."""
    lh, lw = 2 * (height // (vae_scale * 2)), 2 * (width // (vae_scale * 2))
    return (lh // 2) * (lw // 2), channels * 4


def seed_noise(seed: int, width: int, height: int, channels: int = LATENT_CHANNELS,
               vae_scale: int = VAE_SCALE) -> torch.Tensor:
    """Gaussian noise (1, tokens, channels*4), float32, from a CPU generator seeded with `seed`."""
    # 1. Unpacked noise, as a latent image.
    lh, lw = 2 * (height // (vae_scale * 2)), 2 * (width // (vae_scale * 2))
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn((1, channels, lh, lw), generator=gen, dtype=torch.float32)
    # 2. Pack 2×2 patches into tokens, the layout FluxPipeline denoises.
    noise = noise.view(1, channels, lh // 2, 2, lw // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return noise.reshape(1, (lh // 2) * (lw // 2), channels * 4)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, *, eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation from `a` (t=0, returned unchanged) to `b` (t=1) over the whole tensor."""
    if t <= 0:
        return a
    if t >= 1:
        return b
    # 1. The angle between the two noise vectors.
    af, bf = a.flatten().double(), b.flatten().double()
    cos = torch.dot(af, bf) / (af.norm() * bf.norm())
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    # 2. Nearly parallel: a straight line is the same thing and does not divide by ~0.
    if omega.abs() < eps:
        mixed = (1 - t) * af + t * bf
    else:
        so = torch.sin(omega)
        mixed = torch.sin((1 - t) * omega) / so * af + torch.sin(t * omega) / so * bf
    return mixed.to(a.dtype).view_as(a)


def initial_latents(seed: int, width: int, height: int, *, variation_seed: int | None = None,
                    variation_strength: float = 0.0) -> torch.Tensor:
    """The starting latents of one image, float32 on the CPU, (1, tokens, 64)."""
    noise = seed_noise(seed, width, height)
    if variation_seed is None or variation_strength <= 0:
        return noise
    return slerp(noise, seed_noise(variation_seed, width, height), variation_strength)
