"""Memory profiles: where the pipeline's weights live while a job runs.

- `resident`: every model on the device. Fastest; needs VRAM for all weights plus activations.
- `model-offload`: diffusers' model CPU offload: a whole model moves to the GPU when it runs. Needs VRAM
  for the largest model (the fp8 DiT, ~11.6 GiB at 1024²); moves ~23 GiB of weights per image.
- `streamed`: fluxbot's block streamer (engine/streamer.py): the DiT's and T5's blocks stream from
  pinned host RAM through a small ring of device buffers on a copy stream; CLIP and the VAE come in for
  their turn. About 2 GiB of VRAM at 1024².
- `auto`: picks one of the above from free VRAM and host RAM and says why.

Layerwise casting (engine/precision.py) is applied before `apply_profile`, so host copies are fp8.
Every profile has a seam that runs on the CPU: `streamed` on "cpu" runs the same streamer code with host
"device" buffers and no CUDA streams; `model-offload` on "cpu" falls back to resident with a logged reason.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from engine.settings import EngineSettings

log = logging.getLogger(__name__)

GiB = 1024 ** 3
# Leaner means less VRAM: each profile's next step down, for the worker's OOM retry.
_LEANER = {"resident": "model-offload", "model-offload": "streamed", "streamed": None}
# Working memory beyond the weights (activations, VAE decode, CUDA context) at 1024², measured on an H100.
ACTIVATION_HEADROOM = int(3.0 * GiB)
# Tile edge of a tiled VAE decode (pixels). diffusers steps tiles by 3/4 of the edge: 704 px tiles cover a
# 1024² image in 2 x 2 tiles (512 px tiles would take 3 x 3, and more time); each tile ~1/2 of the full peak.
VAE_TILE_PX = 704
# Host RAM kept free for the OS, Python and the bot when pinning host copies.
HOST_RESERVE = int(3.0 * GiB)


@dataclass
class MemoryPlan:
    """What `apply_profile` did: the profile that runs (after any fallback) and why."""
    profile: str
    reason: str
    device: str
    vae_tiling: bool
    streamers: list = field(default_factory=list)   # streamer units (engine/streamer.py) owned by the plan
    undo: list = field(default_factory=list)        # callables that remove other hooks this plan installed

    def release(self) -> None:
        """Remove the plan's hooks and free its device buffers and host copies; the pipeline's weights stay
        usable (in host RAM) so that another profile can be applied."""
        for streamer in self.streamers:
            streamer.close()
        self.streamers.clear()
        for fn in self.undo:
            fn()
        self.undo.clear()


def leaner(profile: str) -> str | None:
    """The next profile that needs less VRAM, or None when `profile` is already the leanest."""
    if profile not in _LEANER:
        raise ValueError(f"unknown memory profile {profile!r}; expected one of {sorted(_LEANER)}")
    return _LEANER[profile]


def choose_profile(device: str, *, free_vram: int, host_ram: int, dit_bytes: int,
                   other_bytes: int) -> tuple[str, str]:
    """The `auto` decision from measured numbers (bytes): (profile, reason). Pure, so it is testable."""
    # 1. The CPU holds everything already.
    if not device.startswith("cuda"):
        return "resident", f"device {device} is not a GPU: weights stay in host RAM"
    total = dit_bytes + other_bytes
    need_resident = total + ACTIVATION_HEADROOM
    # 2. Everything fits on the GPU with room for activations.
    if free_vram >= need_resident:
        return "resident", (f"{free_vram / GiB:.1f} GiB free VRAM >= {need_resident / GiB:.1f} GiB "
                            f"(weights {total / GiB:.1f} + working {ACTIVATION_HEADROOM / GiB:.1f})")
    # 3. The streamer pins every host copy: it needs that much host RAM to spare.
    if host_ram >= total + HOST_RESERVE:
        return "streamed", (f"{free_vram / GiB:.1f} GiB free VRAM < {need_resident / GiB:.1f} GiB for resident; "
                            f"{host_ram / GiB:.1f} GiB host RAM available pins the {total / GiB:.1f} GiB of "
                            f"weights: blocks stream through a small device ring")
    # 4. Not enough host RAM to pin: whole models move in turn (pageable copies).
    return "model-offload", (f"{free_vram / GiB:.1f} GiB free VRAM < {need_resident / GiB:.1f} GiB and only "
                             f"{host_ram / GiB:.1f} GiB host RAM available (< {(total + HOST_RESERVE) / GiB:.1f} "
                             f"GiB to pin every weight): whole models move to the GPU when used")


def resolve_profile(settings: EngineSettings, device: str, *, dit_bytes: int, other_bytes: int) -> tuple[str, str]:
    """The profile to run on `device` and the reason; `auto` measures free VRAM and host RAM now."""
    # 1. A configured profile is taken as is.
    if settings.profile != "auto":
        return settings.profile, f"[engine] profile = {settings.profile!r}"
    # 2. Measure what is free.
    free_vram = 0
    if device.startswith("cuda") and torch.cuda.is_available():
        free_vram, _ = torch.cuda.mem_get_info(torch.device(device))
    host_ram = _available_host_ram()
    # 3. Decide and log it.
    profile, reason = choose_profile(device, free_vram=free_vram, host_ram=host_ram, dit_bytes=dit_bytes,
                                     other_bytes=other_bytes)
    log.info("memory profile auto -> %s: %s", profile, reason)
    return profile, reason


def apply_profile(pipe, profile: str, device: str, settings: EngineSettings) -> MemoryPlan:
    """Place the pipeline's weights for `profile` on `device`; returns the plan that actually runs."""
    if profile == "auto":
        raise ValueError("apply_profile needs a concrete profile: call resolve_profile first")
    if profile not in _LEANER:
        raise ValueError(f"unknown memory profile {profile!r}; expected one of {sorted(_LEANER)}")
    is_gpu = device.startswith("cuda")
    # 1. model-offload needs an accelerator (diffusers refuses otherwise): fall back on the CPU.
    reason = f"profile {profile} on {device}"
    if profile == "model-offload" and not is_gpu:
        reason = f"model-offload needs a CUDA device; {device} runs resident instead"
        log.warning("memory: %s", reason)
        profile = "resident"
    plan = MemoryPlan(profile=profile, reason=reason, device=device, vae_tiling=False)
    # 2. Place the weights.
    if profile == "resident":
        pipe.to(device)
        _lean_casting(pipe)
    elif profile == "model-offload":
        pipe.enable_model_cpu_offload(device=device)
        plan.undo.append(pipe.remove_all_hooks)
    else:
        _apply_streamed(pipe, device, settings, plan)
    # 3. VAE tiling when the decode would not fit.
    plan.vae_tiling = _decide_vae_tiling(settings, plan)
    vae = getattr(pipe, "vae", None)
    if vae is not None and plan.vae_tiling:
        _enable_vae_tiling(vae)
    log.info("memory: %s on %s (vae tiling %s)", plan.profile, device, "on" if plan.vae_tiling else "off")
    return plan


def execution_device(pipe, plan: MemoryPlan) -> torch.device:
    """The device where latents and prompt embeddings must be created for this plan."""
    if plan.profile == "model-offload":
        return pipe._execution_device
    return torch.device(plan.device)


# ------------------------------------------------------------------------------------------------ helpers

def _apply_streamed(pipe, device: str, settings: EngineSettings, plan: MemoryPlan) -> None:
    """Stream the DiT's and T5's blocks with fluxbot's streamer; CLIP and the VAE come in for their turn."""
    from engine.streamer_flux import stream_pipeline

    units = stream_pipeline(pipe, device, vram_budget_bytes=int(settings.vram_budget_gib * GiB),
                            slots=settings.stream_prefetch + 1)
    plan.streamers.extend(units)


def _lean_casting(pipe) -> None:
    """Resident DiT blocks skip diffusers' fp8 re-cast after each Linear too (measured on an H100: 0.219
    instead of 0.234 s/step at 1024²; see docs/benchmarks.md)."""
    from engine.streamer_flux import lean_layerwise_casting

    dit = getattr(pipe, "transformer", None)
    if dit is not None and hasattr(dit, "transformer_blocks"):
        lean_layerwise_casting(list(dit.transformer_blocks) + list(dit.single_transformer_blocks))


def _decide_vae_tiling(settings: EngineSettings, plan: MemoryPlan) -> bool:
    """always/never as configured. auto: tiled on every GPU profile, untiled on the CPU.

    Tiling changes the pixels a little, so it must not depend on the profile (an OOM retry moves a job to a
    leaner one; /show regenerates on whatever profile runs then) nor on free VRAM at load time: the same seed,
    prompt, parameters and model give the same image on one machine whatever the memory situation. On a GPU
    the lean profiles need the tiles (the untiled 1024² decode, 2.57 GiB, would be their peak), and on
    `resident` they cost ~0.1 s an image. The CPU has no such pressure."""
    if settings.vae_tiling != "auto":
        return settings.vae_tiling == "always"
    return plan.device.startswith("cuda")


def _enable_vae_tiling(vae) -> None:
    """Tiled decode in VAE_TILE_PX tiles: FLUX's VAE config says 1024 px tiles, which never tile a 1024² image."""
    vae.enable_tiling()
    if getattr(vae, "tile_sample_min_size", 0) > VAE_TILE_PX:
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        vae.tile_sample_min_size = VAE_TILE_PX
        vae.tile_latent_min_size = VAE_TILE_PX // scale


def _available_host_ram() -> int:
    try:
        import psutil
    except ImportError:  # psutil is a dependency; without it assume plenty and say so
        log.warning("psutil is not installed: host RAM unknown, assuming 64 GiB (pip install psutil)")
        return 64 * GiB
    return int(psutil.virtual_memory().available)
