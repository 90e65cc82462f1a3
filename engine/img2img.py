"""FLUX image-to-image on FluxPipeline, as diffusers' FluxImg2ImgPipeline does it, with fluxbot's own noise.

1. The input image is resized to the job's size (diffusers' image processor: Lanczos), encoded by the VAE (the
   posterior's mode: no random draw, so the same input gives the same latents) and normalised
   ((z − shift) × scale), then packed into FLUX's tokens.
2. The job's schedule is the txt2img one (`linspace(1, 1/N, N)`, shifted for the image size); an image input
   starts at step `start` of it (engine/image_input.py `img2img_steps`), so the denoise runs the last
   N − start sigmas, passed to FluxPipeline as `sigmas`.
3. The starting latents are `σ·noise + (1 − σ)·image` at the first of those sigmas (the flow-matching
   scheduler's `scale_noise`). At strength 1, σ = 1: the image is ignored and the pixels are txt2img's.
   At strength 0 nothing is denoised: the image comes back through the VAE (encode + decode).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from engine.image_input import img2img_steps, read_checked

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """The part of the job's schedule an image input runs."""
    steps: int                   # denoising steps run
    sigmas: list[float] | None   # what FluxPipeline gets as `sigmas` (None: its own full schedule)
    start_sigma: float           # the noise level the image is noised to


def schedule(pipe, steps: int, denoise: float, width: int, height: int) -> Schedule:
    """The sigmas of an image input at strength `denoise` (the whole schedule for 1)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    start, run = img2img_steps(steps, denoise)
    if start == 0:
        return Schedule(steps=steps, sigmas=None, start_sigma=1.0)
    full = np.linspace(1.0, 1 / steps, steps)
    if run == 0:
        return Schedule(steps=0, sigmas=[], start_sigma=0.0)
    # The shifted sigma at `start`: the scheduler shifts each sigma on its own, so the tail of the shifted
    # schedule is the shifted tail, which is what FluxPipeline makes of `sigmas=full[start:]`.
    seq_len = (height // pipe.vae_scale_factor // 2) * (width // pipe.vae_scale_factor // 2)
    cfg = pipe.scheduler.config
    mu = calculate_shift(seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                         cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
    pipe.scheduler.set_timesteps(sigmas=list(full), mu=mu, device="cpu")
    start_sigma = float(pipe.scheduler.sigmas[start])
    return Schedule(steps=run, sigmas=list(full[start:]), start_sigma=start_sigma)


def encode_image(pipe, path: str, sha256: str | None, width: int, height: int, device: torch.device) -> torch.Tensor:
    """The input image as packed, normalised latents (1, tokens, 64), float32 on the CPU."""
    image = read_checked(path, sha256)
    vae = pipe.vae
    with torch.inference_mode():
        pixels = pipe.image_processor.preprocess(image, height=height, width=width)
        vae_device = _vae_device(vae, device)
        posterior = vae.encode(pixels.to(vae_device, vae.dtype)).latent_dist
        latents = (posterior.mode() - vae.config.shift_factor) * vae.config.scaling_factor
        latents = latents.to("cpu", torch.float32)
    _, channels, lh, lw = latents.shape
    return pipe._pack_latents(latents, 1, channels, lh, lw)


def noised(image_latents: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """The starting latents: `sigma`·noise + (1 − `sigma`)·image (exactly the noise at sigma 1)."""
    if sigma >= 1.0:
        return noise
    return sigma * noise + (1.0 - sigma) * image_latents


def _vae_device(vae, device: torch.device) -> torch.device:
    """Where the VAE's input goes: its weights' device, or the execution device when a plan moves the VAE in
    for its turn (its weights are on the host or a memory map until then)."""
    weights = next(vae.parameters()).device
    if weights.type == "meta" or weights.type != device.type:
        return device
    return weights
