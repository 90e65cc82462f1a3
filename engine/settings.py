"""Engine settings: the `[engine]` section of the config file, as a typed dataclass.

Each field carries its documentation and its allowed values in `metadata`; `bot.config` reads them to
validate the file and to name the key and the bad value in its errors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.limits import MAX_GUIDANCE, MAX_STEPS, MIN_GUIDANCE, MIN_STEPS


def setting(default: Any, doc: str, *, choices: tuple | None = None, min: float | None = None,
            max: float | None = None, env: str | None = None) -> Any:
    """A dataclass field with the metadata the config validator reads."""
    meta = {"doc": doc, "choices": choices, "min": min, "max": max, "env": env}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


PROFILES = ("auto", "resident", "model-offload", "streamed")
FP8_MODES = ("all-linear", "diffusers-default", "off")
COMPUTE_MODES = ("auto", "bf16", "fp8")
VAE_TILING = ("auto", "always", "never")
ENGINE_PROCESS = ("auto", "always", "never")
BACKENDS = ("local", "ray")
TINY = "tiny-random"


@dataclass(frozen=True)
class EngineSettings:
    model: str = setting(TINY, "The DiT: a diffusers FLUX.1-dev folder, a single-file checkpoint in BFL key "
                         "layout (majicflus_v134.safetensors, flux1-dev.safetensors), or 'tiny-random' (a tiny "
                         "offline model with random weights, for tests and for checking a Discord set-up).")
    base_model: str = setting("models/FLUX.1-dev", "A diffusers FLUX.1-dev folder that provides the text encoders, "
                              "tokenizers, VAE and configs when `model` is a single file.")
    models_dir: str = setting("models", "Where `python -m bot download` puts weights.")
    loras_dir: str = setting("models/loras", "LoRA files (*.safetensors; kohya/BFL, diffusers/PEFT or XLabs layout) "
                             "that /imagine's `lora` option and <lora:name:0.8> in a prompt may use, by file name "
                             "without the extension. With model = 'tiny-random' a demo LoRA, tiny-random-demo, is "
                             "made here.")
    lora_reserve_rank: int = setting(64, "GPU memory every placement plan keeps for a job's LoRAs, in ranks: this rank "
                                     "on every Linear of the DiT and CLIP, in bf16 (FLUX.1-dev: 10.7 MiB a rank, "
                                     "0.67 GiB at 64), in VRAM and as much in host RAM. A job whose LoRAs together "
                                     "need more (e.g. one rank-128 LoRA on every layer, or three of rank 32) is "
                                     "refused before it is queued. 0 = no LoRAs.", min=0, max=1024)
    lora_cache_mib: int = setting(0, "Host RAM, in MiB, for the converted files of recently used LoRAs besides the "
                                  "current job's (least recently used dropped first), so switching back to a recent "
                                  "LoRA set skips reading and converting its files (a rank-64 FLUX.1-dev LoRA on "
                                  "every layer is ~0.6 GiB). The placement planner counts it in the plan's host RAM: "
                                  "raise it only where `python -m bot plan` shows RAM to spare. 0 = keep the current "
                                  "set's files only.", min=0, max=1 << 20)
    profile: str = setting("auto", "Where the weights live. auto: the placement planner decides, per DiT and T5 "
                           "block, GPU-resident / streamed from pinned host RAM / read from disk (page cache) at each "
                           "use, from the VRAM and RAM budgets below (the log and `python -m bot plan` say why). "
                           "resident: everything on the GPU. streamed: everything streams (DiT blocks stay resident "
                           "only within vram_budget_gib), from pinned RAM while ram_budget_gib lasts, else from disk. "
                           "model-offload: diffusers' whole-model offload.", choices=PROFILES)
    fp8: str = setting("all-linear", "DiT weight storage: all-linear (every Linear in float8_e4m3fn, computed as "
                       "[engine] compute says), diffusers-default (diffusers' skip list keeps norms/modulation in bf16), or off "
                       "(bf16).", choices=FP8_MODES)
    compute: str = setting("auto", "Matmuls of the DiT's fp8-stored Linears: bf16 (each fp8 weight is upcast, then a "
                           "bf16 matmul), fp8 (fp8 tensor-core matmuls, dynamic per-token activation scales, "
                           "fast accumulation: the row-fast-tq kernel; needs an sm_89+ GPU: Ada, Hopper or newer), "
                           "or auto (fp8 where the GPU has fp8 tensor cores, else bf16; bf16 on the CPU). Compiled on "
                           "an H200, fp8 is 1.38x faster than bf16 (0.0925 vs 0.1278 s/step with bf16_copy) and moves the final latents "
                           "about half as far as fp8 storage itself does (docs/engine.md); eager it is slower (0.259 "
                           "vs 0.208), so compile = false with auto keeps bf16.", choices=COMPUTE_MODES)
    compile: bool = setting(True, "torch.compile the DiT's repeated blocks on GPUs (the CPU always runs eager). The "
                            "first image of each new size or batch compiles first (the bot says 'warming up'); "
                            "compiled kernels are cached on disk under models_dir/.fluxbot-cache/inductor, so a "
                            "restart warms up faster. Changes pixels slightly (docs/engine.md).")
    cuda_graphs: bool = setting(True, "With compiled blocks on a GPU and the resident plan, record each denoising "
                                "step's DiT forward as a CUDA graph and replay it (the third step of a new size, "
                                "batch or LoRA set records it): the GPU no longer waits for Python to launch "
                                "~1,500 kernels a step (H200, fp8: 0.0957 -> 0.0925 s/step). Same pixels. Each "
                                "recorded shape keeps its working memory (measured: under 0.1 GiB at 1024², batch 1; "
                                "1.35 GiB at batch 4); a shape is recorded only while the GPU keeps room for it and "
                                "the VAE decode (docs/engine.md).")
    bf16_copy: bool = setting(True, "With bf16 compute (compute = \"bf16\", or auto on a GPU without fp8 tensor "
                              "cores), compiled blocks and the resident plan, keep a bf16 copy of the DiT's fp8 "
                              "Linears on the GPU beside them (~22 GiB more for FLUX.1-dev) when the VRAM budget has "
                              "room for it and 2 GiB to spare: no step upcasts the weights again (H200: 0.1278 s/step "
                              "with CUDA graphs). The recipe says \"bf16 (working copy)\": compiled, its pixels differ "
                              "slightly from the upcast's, which /show of an older job runs again. The log says "
                              "whether it was kept and why (docs/engine.md).")
    devices: list = setting(["auto"], "Devices to run workers on, one worker each: ['auto'] (every CUDA GPU, "
                            "else the CPU), or e.g. ['cuda:0', 'cuda:1'] or ['cpu'].")
    engine_process: str = setting("auto", "Where each device's engine runs: auto (in its own child process when "
                                  "more than one CUDA device is configured, else in the bot's process), always, or "
                                  "never. A child process per GPU keeps the GPUs from waiting on one Python lock (two "
                                  "GPUs in one process: 1.61x one GPU), at a cost: each child is a second Python "
                                  "with its own torch (~0.4 GiB host RAM before weights, ~1 s more start-up), and "
                                  "each image crosses back pickled (~3 MB, ~7 ms for 1024x1024).",
                                  choices=ENGINE_PROCESS)
    backend: str = setting("local", "Where the workers' engines run: local (on this host's devices, above) or ray "
                           "(one engine actor per GPU of a Ray cluster, [ray] below; `pip install -e '.[ray]'`; "
                           "docs/scale-out.md). With ray, `devices` and `engine_process` do not apply.",
                           choices=BACKENDS)
    vram_budget_gib: float = setting(0.0, "GiB of VRAM every plan may use (weights, ring and working memory; the "
                                     "CUDA context not counted). 0 = the free VRAM at start-up minus 0.25 GiB. With "
                                     "profile = streamed and 0, no DiT block stays resident (the leanest plan).", min=0)
    ram_budget_gib: float = setting(0.0, "GiB of host RAM the plan may hold (pinned copies and working memory). 0 = "
                                    "measured at start-up: the smaller of MemAvailable and the room under the "
                                    "process's cgroup memory limit, minus 1.5 GiB. What does not fit is read from "
                                    "disk (memory-mapped weights) at each use.", min=0)
    stream_prefetch: int = setting(3, "Whenever blocks stream (every plan but resident): blocks copied ahead of the "
                                   "one running (the device ring holds this + 1 blocks, ~0.32 GiB each for FLUX.1-dev). More smooths copy/compute "
                                   "jitter at the cost of VRAM.", min=1, max=8)
    vae_tiling: str = setting("auto", "VAE tiled decode (704 px tiles, blended; lowers the decode peak from 2.6 GiB at 1024²): auto (on every "
                              "GPU profile, so an image never changes with the profile; off on the CPU), always, never.",
                              choices=VAE_TILING)
    prompt_cache_size: int = setting(32, "Prompt embeddings kept (LRU); a cached prompt skips the text "
                                     "encoders. 0 disables the cache.", min=0, max=10000)
    max_batch: int = setting(1, "Most queued jobs with the same size/steps/guidance run together as one batch.",
                             min=1, max=16)
    default_steps: int = setting(20, "Steps when a request names none.", min=MIN_STEPS, max=MAX_STEPS)
    default_guidance: float = setting(3.5, "Guidance when a request names none.", min=MIN_GUIDANCE,
                                      max=MAX_GUIDANCE)
    max_sequence_length: int = setting(512, "T5 tokens per prompt.", min=16, max=512)
    images_dir: str = setting("data/images", "Where finished PNGs are written (named by job id).")
