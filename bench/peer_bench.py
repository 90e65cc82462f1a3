"""Peer benchmark (issue 14): the seed's DiffSynth-Studio recipe next to fluxbot's plans, and output parity.

On the GPU machine, as root (bench/run_peer_device.sh installs the carried wheels first):

    python bench/peer_bench.py --all --dir /data/peer --out $OUT/peer.jsonl --save-dir $OUT/img
    python bench/peer_bench.py --tiny            # CPU smoke: tiny files, every recipe's child, the parity report
    python bench/peer_bench.py --cpu-parity      # CPU, no files: noise, schedules, one DiT forward of each

1. Files: bench/plan_bench.py's writer (random bf16 weights in the real layouts: the BFL single-file DiT, 780
   tensors; the FLUX.1-dev folder's text_encoder/model.safetensors, text_encoder_2/ shards, the VAE), with
   DiffSynth's own bundled CLIP and T5 tokenizers, so that every implementation encodes the same token ids.
2. Recipes, each in its own child process (plan_bench's cgroup, page cache dropped first, a warm-up image of
   another prompt and 2 steps, then the measured image: PROMPT, seed 7, 1024², 20 steps, guidance 3.5):
   - fluxbot: plan_bench's rows (first start, resident, 16/6);
   - seed: DiffSynth 1.1.9 exactly as the seed runs majicflus_v1: ModelManager(torch_dtype=bf16, device="cpu"),
     the DiT loaded with torch_dtype=float8_e4m3fn, CLIP/T5/VAE in bf16, FluxImagePipeline.from_model_manager(
     device="cuda"), enable_cpu_offload(), dit.quantize(); it must have loaded every model (an unrecognised file
     only prints a warning); then one more image with FLUX.1's reference noise and schedule put in (parity only);
   - reference: diffusers' FluxPipeline on the bf16 weights, resident (FLUX.1's reference behaviour).
3. Parity: initial noise, schedules, final latents and images (PSNR, relative L2) of every pair; `explain`
   names the causes (see docs/benchmarks.md, issue 14).
Every row prints one JSON line; `--all` prints the table and the parity report last.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import plan_bench as pb  # noqa: E402  (the shared writers, cgroups, peak sampling and fluxbot's rows)

log = logging.getLogger("peer_bench")

GiB = pb.GiB
SEED = 7            # plan_bench's measured image
GUIDANCE = 3.5      # fluxbot's default and DiffSynth's embedded_guidance default
SEED_MODELS = ("flux_dit", "sd3_text_encoder_1", "flux_text_encoder_2", "flux_vae_decoder")


@dataclass(frozen=True)
class PeerRow:
    """A row as plan_bench.run_row takes it, plus the recipe its child runs."""
    name: str
    ram_gib: float
    vram_gib: float
    recipe: str                 # "fluxbot", "seed" or "reference"
    profile: str = "auto"
    must: str = ""
    load_only: bool = False


ROWS = [
    PeerRow("first-start", 16, 0, "fluxbot", profile="resident", load_only=True, must="fluxbot's first start (builds its fp8 cache)"),
    PeerRow("resident", 0, 0, "fluxbot", profile="resident", must="fluxbot, the card's own"),
    PeerRow("seed", 0, 0, "seed", must="the seed's recipe, no limits"),
    PeerRow("16/6", 16, 6, "fluxbot", must="fluxbot, the planner on a 16 GB PC with a 6 GB card"),
    PeerRow("reference", 0, 0, "reference", must="diffusers FluxPipeline, bf16, resident"),
    PeerRow("seed@16/6", 16, 6, "seed", must="the seed's recipe on the PC it claims to fit"),
]


# ------------------------------------------------------------------------------------------------- files

def write_files(root: Path, tiny: bool, device: str) -> dict:
    """plan_bench's files with DiffSynth's bundled tokenizers (the tiny architecture's vocabularies are too small
    for them: it keeps the tiny offline ones, as it does when DiffSynth is missing)."""
    if tiny:
        return pb.write_model(root, pb.TINY, device)
    return pb.write_model(root, pb.FLUX_DEV, device, tokenizers=diffsynth_tokenizers())


def diffsynth_tokenizers() -> Path | None:
    """The folder holding DiffSynth's CLIP (tokenizer_1) and T5 (tokenizer_2) tokenizers, or None."""
    import importlib.util

    spec = importlib.util.find_spec("diffsynth")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_configs" / "flux"
    return folder if (folder / "tokenizer_2").is_dir() else None


# ------------------------------------------------------------------------------------------- the children

def child(args) -> dict:
    row = json.loads(args.child)
    if row["recipe"] == "seed":
        return seed_child(args, row)
    if row["recipe"] == "reference":
        return reference_child(args, row)
    raise SystemExit(f"unknown recipe {row['recipe']!r}")


def _cap_vram(row: dict, device: str) -> None:
    import torch

    if row["vram_gib"] and device != "cpu":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction((row["vram_gib"] - pb.CONTEXT_GIB) * GiB / total, 0)


def import_diffsynth():
    """`import diffsynth` on transformers 5: 1.1.9 imports `PretrainedConfig`, renamed `PreTrainedConfig`."""
    import transformers.modeling_utils as modeling_utils
    from transformers import PreTrainedConfig

    if not hasattr(modeling_utils, "PretrainedConfig"):
        modeling_utils.PretrainedConfig = PreTrainedConfig
    import diffsynth

    return diffsynth


def load_seed_pipeline(root: Path, device: str):
    """The seed's code path, line for line: (pipe, {model name: file}). Raises if DiffSynth left a model out."""
    import torch

    diffsynth = import_diffsynth()
    base = root / pb.BASE
    mm = diffsynth.ModelManager(torch_dtype=torch.bfloat16, device="cpu")
    mm.load_models([str(root / pb.DIT_FILE)], torch_dtype=torch.float8_e4m3fn, device="cpu")
    mm.load_models([str(base / "text_encoder" / "model.safetensors"), str(base / "text_encoder_2"),
                    str(base / "vae" / "diffusion_pytorch_model.safetensors")], torch_dtype=torch.bfloat16,
                   device="cpu")
    loaded = dict(zip(mm.model_name, mm.model_path))
    missing = [m for m in SEED_MODELS if m not in loaded]
    if missing:
        raise RuntimeError(f"DiffSynth did not load {missing} (it recognises a file by a hash of its tensor names "
                           f"and shapes and only prints a warning otherwise); it loaded {loaded}")
    pipe = diffsynth.FluxImagePipeline.from_model_manager(mm, device=device)
    pipe.enable_cpu_offload()
    pipe.dit.quantize()
    return pipe, loaded


def seed_child(args, row: dict) -> dict:
    """DiffSynth as the seed runs it: load, a warm-up image, the measured image, then the aligned image."""
    import torch

    from engine.mmap_weights import memory_status

    root, device = Path(args.dir), ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    out: dict = {"row": row["name"], "recipe": "seed", "steps": args.steps, "res": args.res}
    _cap_vram(row, device)
    sampler = pb.PeakSampler()
    # 1. Load (the seed's lines), and check what DiffSynth loaded and in which dtype.
    t0 = time.perf_counter()
    pipe, loaded = load_seed_pipeline(root, device)
    out["load_s"] = round(time.perf_counter() - t0, 2)
    out["loaded"] = loaded
    out["dit_dtypes"] = _dtype_bytes(pipe.dit)
    out["mem_after_load"] = pb._gib(memory_status())
    out["load_peaks"] = sampler.take()
    print(json.dumps(out), flush=True)
    return seed_images(pipe, args, row, device, sampler, out)


def seed_images(pipe, args, row: dict, device: str, sampler, out: dict) -> dict:
    """A loaded DiffSynth pipeline's images: warm-up, the measured one, and (no VRAM cap) the aligned one."""
    import torch

    from engine.mmap_weights import memory_status

    root = Path(args.dir)
    # 2. Warm-up (another prompt, 2 steps), then the measured image with the noise DiffSynth draws kept.
    size = args.res
    pipe(prompt=pb.WARM_PROMPT, seed=1, num_inference_steps=2, height=size, width=size, progress_bar_cmd=iter)
    if device != "cpu":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    noise = _keep_noise(pipe)
    final = _keep_final_latents(pipe)
    timer = StepTimer(device)
    t0 = time.perf_counter()
    image = pipe(prompt=pb.PROMPT, seed=SEED, num_inference_steps=args.steps, height=size, width=size,
                 embedded_guidance=GUIDANCE, progress_bar_cmd=timer)
    _sync(device)
    out.update(timer.summary(t0, time.perf_counter()))
    if device != "cpu":
        out["peak_alloc_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 3)
        out["peak_vram_gib"] = round(out["peak_alloc_gib"] + pb.CONTEXT_GIB, 3)
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GiB, 3)
    out["mem_end"] = pb._gib(memory_status())
    out["peak_rss_gib"] = out["mem_end"].get("VmHWM")
    out["image_peaks"] = sampler.take()
    out["sigmas"] = [round(float(s), 6) for s in pipe.scheduler.sigmas]
    out["noise_device"] = str(noise["latents"].device) if noise else None
    print(json.dumps(out), flush=True)
    # 3. Parity files: the image, its initial noise and final latents; then the same with FLUX.1's reference
    #    noise (fluxbot's, from a CPU generator) and schedule put into DiffSynth's pipeline.
    if args.save_dir:
        save = Path(args.save_dir)
        image.save(save / f"{pb.row_file_name(row['name'])}.png")
        torch.save(noise["latents"].float().cpu(), save / f"{pb.row_file_name(row['name'])}-noise.pt")
        torch.save(final["latents"].float().cpu(), save / f"{pb.row_file_name(row['name'])}-latents.pt")
        if not row["vram_gib"]:
            aligned = _aligned_image(pipe, root, args, device, final)
            aligned.save(save / "seed-aligned.png")
            torch.save(final["latents"].float().cpu(), save / "seed-aligned-latents.pt")
            out["aligned"] = True
    out["image_std"] = _std(image)
    return out


def _aligned_image(pipe, root: Path, args, device: str, final: dict):
    """DiffSynth's pipeline with fluxbot's initial noise and FLUX.1's reference sigmas put in: what is left of the
    difference is the arithmetic (fp8 storage details, bf16 latents, timestep precision)."""
    import torch

    from engine.noise import initial_latents

    noise = unpack(initial_latents(SEED, args.res, args.res), args.res, args.res)
    sigmas = reference_sigmas(root / pb.BASE, args.res, args.steps)[:-1]
    set_timesteps = pipe.scheduler.set_timesteps

    def reference_schedule(num_inference_steps=100, denoising_strength=1.0, **kw):
        set_timesteps(num_inference_steps, denoising_strength, **kw)
        pipe.scheduler.sigmas = torch.tensor(sigmas, dtype=torch.float32)
        pipe.scheduler.timesteps = pipe.scheduler.sigmas * pipe.scheduler.num_train_timesteps

    pipe.scheduler.set_timesteps = reference_schedule
    pipe.generate_noise = lambda shape, seed=None, device=device, dtype=torch.bfloat16: noise.to(device, dtype)
    return pipe(prompt=pb.PROMPT, seed=SEED, num_inference_steps=args.steps, height=args.res, width=args.res,
                embedded_guidance=GUIDANCE, progress_bar_cmd=iter)


def _keep_noise(pipe) -> dict:
    """Wrap pipe.generate_noise so that the latents it draws are kept (DiffSynth's own call, untouched)."""
    kept: dict = {}
    draw = pipe.generate_noise

    def keep(*a, **kw):
        kept["latents"] = draw(*a, **kw)
        kept["call"] = {k: str(v) for k, v in kw.items()}
        return kept["latents"]

    pipe.generate_noise = keep
    return kept


def _keep_final_latents(pipe) -> dict:
    kept: dict = {}
    decode = pipe.decode_image

    def keep(latent, *a, **kw):
        kept["latents"] = latent.detach()
        return decode(latent, *a, **kw)

    pipe.decode_image = keep
    return kept


class StepTimer:
    """A progress_bar_cmd for DiffSynth: stamps each step's start (synchronised) and the loop's end."""

    def __init__(self, device: str):
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, iterable):
        for item in iterable:
            _sync(self.device)
            self.stamps.append(time.perf_counter())
            yield item
        _sync(self.device)
        self.stamps.append(time.perf_counter())

    def summary(self, start: float, end: float) -> dict:
        s = self.stamps
        steps = [b - a for a, b in zip(s, s[1:])]
        return {"image_s": round(end - start, 3), "before_steps_s": round(s[0] - start, 3),
                "denoise_s": round(s[-1] - s[0], 3), "after_steps_s": round(end - s[-1], 3),
                "s_per_step": round(statistics.median(steps), 4)}


def reference_child(args, row: dict) -> dict:
    """diffusers' FluxPipeline on the bf16 weights, resident: FLUX.1's reference behaviour (and its cost)."""
    import torch
    from diffusers import FluxPipeline

    from engine.mmap_weights import memory_status

    root, device = Path(args.dir), ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    base = root / pb.BASE
    out: dict = {"row": row["name"], "recipe": "reference", "steps": args.steps, "res": args.res}
    _cap_vram(row, device)
    sampler = pb.PeakSampler()
    t0 = time.perf_counter()
    dit = _reference_dit(root, args.tiny)
    pipe = FluxPipeline.from_pretrained(str(base), transformer=dit, dtype=torch.bfloat16).to(device)
    out["load_s"] = round(time.perf_counter() - t0, 2)
    out["load_peaks"] = sampler.take()
    print(json.dumps(out), flush=True)
    size = args.res

    def run(prompt, seed, steps, **kw):
        return pipe(prompt=prompt, generator=torch.Generator("cpu").manual_seed(seed), num_inference_steps=steps,
                    height=size, width=size, guidance_scale=GUIDANCE, max_sequence_length=args.seq, **kw)

    run(pb.WARM_PROMPT, 1, 2, output_type="latent")
    if device != "cpu":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    kept = _keep_prepared_latents(pipe)
    stamps: list[float] = []

    def stamp(_pipe, _i, _t, kw):
        _sync(device)
        stamps.append(time.perf_counter())
        return kw

    t0 = time.perf_counter()
    packed = run(pb.PROMPT, SEED, args.steps, output_type="latent", callback_on_step_end=stamp).images
    _sync(device)
    t1 = time.perf_counter()
    image = decode_like_flux_pipeline(pipe, packed, size)
    _sync(device)
    end = time.perf_counter()
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    out.update(image_s=round(end - t0, 3), denoise_s=round(t1 - t0, 3), decode_s=round(end - t1, 3),
               s_per_step=round(statistics.median(steps), 4) if steps else None)
    if device != "cpu":
        out["peak_alloc_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 3)
        out["peak_vram_gib"] = round(out["peak_alloc_gib"] + pb.CONTEXT_GIB, 3)
    out["mem_end"] = pb._gib(memory_status())
    out["peak_rss_gib"] = out["mem_end"].get("VmHWM")
    out["image_peaks"] = sampler.take()
    out["sigmas"] = [round(float(s), 6) for s in pipe.scheduler.sigmas]
    out["image_std"] = _std(image)
    if args.save_dir:
        save = Path(args.save_dir)
        image.save(save / "reference.png")
        torch.save(kept["latents"].float().cpu(), save / "reference-noise.pt")
        torch.save(packed.float().cpu(), save / "reference-latents.pt")
    return out


def _reference_dit(root: Path, tiny: bool):
    """diffusers' own single-file loader (its BFL converter); it hard-codes FLUX.1's widths, so the tiny smoke
    converts with engine/bfl_keys.py instead."""
    import torch
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file

    base = root / pb.BASE
    if not tiny:
        return FluxTransformer2DModel.from_single_file(str(root / pb.DIT_FILE), config=str(base),
                                                       subfolder="transformer", dtype=torch.bfloat16)
    from engine.bfl_keys import bfl_to_diffusers

    dit = FluxTransformer2DModel.from_config(FluxTransformer2DModel.load_config(base / "transformer"))
    dit.load_state_dict(bfl_to_diffusers(load_file(root / pb.DIT_FILE), dit.config))
    return dit.to(torch.bfloat16).eval()


def _keep_prepared_latents(pipe) -> dict:
    kept: dict = {}
    prepare = pipe.prepare_latents

    def keep(*a, **kw):
        result = prepare(*a, **kw)
        kept["latents"] = result[0].detach()
        return result

    pipe.prepare_latents = keep
    return kept


def decode_like_flux_pipeline(pipe, packed, size: int):
    """FluxPipeline's own decode (its __call__ after the loop), kept apart so that the latents are seen."""
    import torch

    with torch.inference_mode():
        latents = pipe._unpack_latents(packed, size, size, pipe.vae_scale_factor)
        latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        pixels = pipe.vae.decode(latents.to(pipe.vae.dtype), return_dict=False)[0]
        return pipe.image_processor.postprocess(pixels, output_type="pil")[0]


def _dtype_bytes(module) -> dict:
    """Bytes of the module's parameters by dtype (the seed's DiT must be float8_e4m3fn)."""
    out: dict[str, int] = {}
    for p in module.parameters():
        out[str(p.dtype).removeprefix("torch.")] = out.get(str(p.dtype).removeprefix("torch."), 0) + p.nbytes
    return {k: round(v / GiB, 3) for k, v in out.items()}


def _std(image) -> float:
    import numpy as np

    return round(float(np.asarray(image, dtype=np.float32).std()), 2)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------- schedules, noise

def reference_sigmas(base: Path, res: int, steps: int) -> list[float]:
    """The sigmas diffusers' FluxPipeline (and so fluxbot) denoises with, the final 0 included: FLUX.1's
    schedule (BFL's get_schedule: linspace(1, 1/steps), time-shifted by mu from the image's token count)."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(str(base), subfolder="scheduler")
    tokens = (res // 16) * (res // 16)
    mu = calculate_shift(tokens, sched.config.get("base_image_seq_len", 256), sched.config.get("max_image_seq_len",
                         4096), sched.config.get("base_shift", 0.5), sched.config.get("max_shift", 1.15))
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return [float(s) for s in sched.sigmas]


def bfl_sigmas(res: int, steps: int) -> list[float]:
    """BFL's flux/sampling.py get_schedule(steps, tokens, 0.5, 1.15), written out (the independent check)."""
    tokens = (res // 16) * (res // 16)
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (tokens - 256)
    ts = [1 - i / steps for i in range(steps + 1)]
    return [0.0 if t <= 0 else math.exp(mu) / (math.exp(mu) + (1 / t - 1)) for t in ts]


def seed_sigmas(steps: int) -> list[float]:
    """DiffSynth 1.1.9 FluxImagePipeline's schedule, the final 0 appended (read from its FlowMatchScheduler)."""
    diffsynth = import_diffsynth()
    sched = diffsynth.FlowMatchScheduler()
    sched.set_timesteps(steps, 1.0)
    return [float(s) for s in sched.sigmas] + [0.0]


def unpack(packed, width: int, height: int):
    """(1, tokens, 64) packed latents -> (1, 16, h/8, w/8), the layout DiffSynth draws and decodes."""
    lh, lw = height // 8, width // 8
    return packed.view(1, lh // 2, lw // 2, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, lh, lw)


# -------------------------------------------------------------------------------------------------- parity

def rel_l2(a, b) -> float:
    """||a - b|| / ||b|| over float64 copies."""
    import torch

    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def psnr(a, b, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio of two uint8 images, dB (inf when equal)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


SAME_NOISE = ("resident", "16_6", "reference", "seed-aligned")  # started from fluxbot's noise (seed 7)
PAIRS = [  # (a, b, what the pair isolates)
    ("resident", "reference", "fluxbot (fp8 storage) vs FLUX.1's reference (bf16): the fp8 cost"),
    ("16_6", "resident", "fluxbot's lean plan vs its resident plan: must be the same computation"),
    ("seed", "reference", "the seed vs the reference: noise stream, schedule, fp8, arithmetic"),
    ("seed", "resident", "the seed vs fluxbot, each as it runs"),
    ("seed-aligned", "reference", "the seed with the reference's noise and schedule: fp8 and arithmetic"),
    ("seed-aligned", "resident", "both fp8, same noise and schedule: DiffSynth's vs diffusers' arithmetic"),
]


def parity(save: Path, res: int, steps: int, base: Path) -> dict:
    """Noise, schedules, final latents and images compared for every pair whose files exist."""
    import numpy as np
    import torch
    from PIL import Image

    from engine.noise import initial_latents

    out: dict = {"noise": {}, "pairs": []}
    # 1. Initial noise: fluxbot's (CPU generator, float32) against what each implementation drew.
    ours = unpack(initial_latents(SEED, res, res), res, res)
    for name in ("reference", "seed"):
        f = save / f"{name}-noise.pt"
        if f.exists():
            theirs = torch.load(f)
            theirs = unpack(theirs, res, res) if theirs.dim() == 3 else theirs
            out["noise"][name] = {"equal_to_fluxbot_bf16": bool(torch.equal(ours.bfloat16().float(), theirs)),
                                  "rel_l2_to_its_bf16": round(rel_l2(theirs, ours.bfloat16().float()), 5),
                                  "corr": round(float(torch.corrcoef(torch.stack([theirs.flatten(), ours.flatten()]))[0, 1]), 4)}
    # 2. Schedules.
    ref = reference_sigmas(base, res, steps)
    out["sigmas"] = {"reference": [round(s, 5) for s in ref],
                     "bfl_max_abs_diff": round(max(abs(a - b) for a, b in zip(ref, bfl_sigmas(res, steps))), 7)}
    try:
        seed = seed_sigmas(steps)
        out["sigmas"]["seed"] = [round(s, 5) for s in seed]
        out["sigmas"]["seed_max_abs_diff"] = round(max(abs(a - b) for a, b in zip(ref, seed)), 5)
    except ImportError as e:
        out["sigmas"]["seed"] = f"DiffSynth not importable here: {e}"
    # 3. Final latents and images, pair by pair.
    for a, b, what in PAIRS:
        fa, fb = save / f"{a}.png", save / f"{b}.png"
        if not (fa.exists() and fb.exists()):
            continue
        ia, ib = np.asarray(Image.open(fa).convert("RGB")), np.asarray(Image.open(fb).convert("RGB"))
        pair = {"a": a, "b": b, "what": what, "psnr_db": round(psnr(ia, ib), 2),
                "image_rel_l2": round(rel_l2(ia, ib), 5), "std_a": round(float(ia.std()), 2),
                "std_b": round(float(ib.std()), 2)}
        la, lb = _latents(save / f"{a}-latents.pt", res), _latents(save / f"{b}-latents.pt", res)
        if la is not None and lb is not None:
            pair["latents_rel_l2"] = round(rel_l2(la, lb), 5)
            if a in SAME_NOISE and b in SAME_NOISE:  # what the denoising added to the same starting noise
                pair["moved_rel_l2"] = round(rel_l2(la - ours, lb - ours), 5)
        out["pairs"].append(pair)
    return out


def _latents(path: Path, res: int):
    import torch

    if not path.exists():
        return None
    x = torch.load(path)
    return unpack(x, res, res) if x.dim() == 3 else x


# ------------------------------------------------------------------------------------------------ the parent

def run_all(args) -> list[dict]:
    import torch

    t_start = time.time()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    root = Path(args.dir)
    # 1. Files (DiffSynth's tokenizers in the base folder), then each row in its child.
    files = write_files(root, args.tiny, device)
    save = Path(args.save_dir or root / "peer-images")
    save.mkdir(parents=True, exist_ok=True)
    args.save_dir = str(save)
    if device == "cuda":
        torch.cuda.empty_cache()
    head = {"files": files, "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
            "torch": torch.__version__, "versions": _versions(), "tokenizers": str(diffsynth_tokenizers())}
    _emit(args, head)
    rows: list[dict] = []
    for row in chosen_rows(args.only):
        if args.deadline and time.time() - t_start > args.deadline:
            rows.append({"row": row.name, "error": "skipped: the run's deadline passed"})
        elif row.recipe == "fluxbot":
            rows.append(pb.run_row(args, pb.Row(row.name, row.ram_gib, row.vram_gib, row.profile, row.must,
                                                row.load_only)))
        else:
            rows.append(pb.run_row(args, row, script=str(Path(__file__).resolve())))
        rows[-1]["recipe"] = row.recipe
        _emit(args, rows[-1])
    # 2. Parity, then the table.
    report = parity(save, args.res, args.steps, root / pb.BASE)
    _emit(args, {"parity": report})
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(json.dumps({"final": rows}) + "\n")
    print_table(rows)
    print_parity(report)
    return [head] + rows + [{"parity": report}]


def chosen_rows(only: str) -> list[PeerRow]:
    """The rows named in `only` (comma-separated, in that order), else all. Without first-start, the first
    fluxbot row builds the fp8 cache (its load time is then a first start's)."""
    names = [n for n in only.split(",") if n]
    known = {r.name: r for r in ROWS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown}: choose from {list(known)}")
    return [known[n] for n in names] if names else list(ROWS)


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "diffusers", "transformers", "diffsynth"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _emit(args, row: dict) -> None:
    print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def print_table(rows: list[dict]) -> None:
    head = (f"{'row':12} {'recipe':9} {'s/image':>8} {'s/step':>7} {'VRAM GiB':>8} {'RSS GiB':>8} {'cg peak':>7} "
            f"{'load s':>7} {'oom':>3}  note")
    print(head)
    print("-" * len(head))
    for r in rows:
        image = f"{r['image_s']:.2f}" if "image_s" in r else "-"
        step = f"{r['s_per_step']:.3f}" if r.get("s_per_step") else "-"
        print(f"{r['row']:12} {r.get('recipe', ''):9} {image:>8} {step:>7} {str(r.get('peak_vram_gib', '-')):>8} "
              f"{str(r.get('peak_rss_gib', '-')):>8} {str(r.get('cgroup_peak_gib', '-')):>7} "
              f"{str(r.get('load_s', '-')):>7} {str(r.get('oom_kill', '-')):>3}  {r.get('error', '')[:90]}")


def print_parity(report: dict) -> None:
    print("initial noise vs fluxbot's:", json.dumps(report["noise"]))
    sig = report["sigmas"]
    print("sigmas, reference:", sig["reference"])
    print("sigmas, seed:     ", sig.get("seed"))
    print(f"{'a':13} {'b':10} {'PSNR dB':>8} {'img rel L2':>10} {'lat rel L2':>10} {'std a':>6} {'std b':>6}  what")
    for p in report["pairs"]:
        print(f"{p['a']:13} {p['b']:10} {p['psnr_db']:>8} {p['image_rel_l2']:>10} {str(p.get('latents_rel_l2', '-')):>10} "
              f"{p['std_a']:>6} {p['std_b']:>6}  {p['what']}")


# -------------------------------------------------------------------------------------------- CPU parity

def cpu_parity(res: int = 1024, steps: int = 20) -> dict:
    """What can be compared without weights or a GPU: fluxbot's noise against diffusers' own draw, the
    reference schedule against BFL's formula and DiffSynth's, and (DiffSynth importable) one forward of a
    FLUX.1-width DiT cut to one double and one single block, same random BFL weights, in both implementations."""
    import tempfile

    import torch
    from diffusers.utils.torch_utils import randn_tensor

    from engine.noise import initial_latents

    out: dict = {}
    # 1. Noise: diffusers' prepare_latents draws (1, 16, h/8, w/8) from the CPU generator in the latents' dtype.
    drawn = randn_tensor((1, 16, res // 8, res // 8), generator=torch.Generator("cpu").manual_seed(SEED),
                         device=torch.device("cpu"), dtype=torch.bfloat16)
    ours = unpack(initial_latents(SEED, res, res), res, res)
    out["noise_fluxbot_equals_diffusers"] = bool(torch.equal(ours.bfloat16(), drawn))
    # 2. Schedules (the scheduler config FLUX.1-dev ships, as plan_bench writes it).
    with tempfile.TemporaryDirectory() as tmp:
        write_scheduler(Path(tmp))
        for r in (res, 512):
            ref = reference_sigmas(Path(tmp), r, steps)
            out[f"sigmas_{r}"] = {"reference": [round(s, 4) for s in ref],
                                  "bfl_max_abs_diff": max(abs(a - b) for a, b in zip(ref, bfl_sigmas(r, steps)))}
            try:
                seed = seed_sigmas(steps)
                out[f"sigmas_{r}"]["seed"] = [round(s, 4) for s in seed]
                out[f"sigmas_{r}"]["seed_max_abs_diff"] = round(max(abs(a - b) for a, b in zip(ref, seed)), 4)
            except ImportError as e:
                out[f"sigmas_{r}"]["seed"] = f"DiffSynth not importable: {e}"
    # 3. One DiT forward in each implementation.
    try:
        out["dit_forward"] = dit_forward_parity()
    except ImportError as e:
        out["dit_forward"] = f"DiffSynth not importable: {e}"
    return out


def write_scheduler(base: Path) -> None:
    """FLUX.1-dev's scheduler config (as plan_bench writes it) in base/scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                                    shift=3.0, use_dynamic_shifting=True).save_config(base / "scheduler")


def dit_forward_parity(tokens_side: int = 8, text_tokens: int = 16, seed: int = 0) -> dict:
    """A FLUX.1-dev-width DiT with one double and one single block: the same random BFL state dict loaded by
    fluxbot's converter (engine/bfl_keys.py, into diffusers' model) and by DiffSynth's (from_civitai); the same
    inputs (the timestep and guidance as each pipeline passes them); outputs compared in float32 and bf16, and
    with DiffSynth's fp8 storage (dit.quantize()) against fluxbot's (engine/precision.py, all-linear)."""
    import torch
    from diffusers import FluxTransformer2DModel

    from engine.bfl_keys import bfl_to_diffusers, diffusers_to_bfl

    diffsynth = import_diffsynth()
    from diffsynth.models.flux_dit import FluxDiT
    from diffsynth.models.utils import init_weights_on_device

    cfg = dict(pb.FLUX_DEV.dit, num_layers=1, num_single_layers=1)
    gen = torch.Generator("cpu").manual_seed(seed)
    # 1. Random weights in the BFL layout (as a checkpoint file holds them).
    with torch.device("meta"):
        meta = FluxTransformer2DModel(**cfg)
    shapes = {k: v.shape for k, v in diffusers_to_bfl(meta.state_dict(), meta.config).items()}
    bfl = {k: (torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16) for k, s in shapes.items()}
    # 2. fluxbot's side: BFL -> diffusers names, into FluxTransformer2DModel.
    ours = FluxTransformer2DModel(**cfg).eval()
    ours.load_state_dict(bfl_to_diffusers(bfl, ours.config), strict=True)
    # 3. DiffSynth's side: its from_civitai converter, FluxDiT cut to the same depth.
    converted = FluxDiT.state_dict_converter().from_civitai(bfl)
    converted = converted[0] if isinstance(converted, tuple) else converted
    with init_weights_on_device():
        theirs = FluxDiT(num_blocks=1)
    theirs.single_blocks = theirs.single_blocks[:1]
    missing = set(theirs.state_dict()) ^ set(converted)
    theirs.load_state_dict(converted, assign=True)
    theirs = theirs.eval()
    # 4. Inputs: latents, T5 and CLIP embeddings, one sigma, guidance 3.5.
    side, sigma = tokens_side, 0.9836  # the 1024² schedule's second sigma: FluxPipeline embeds t = 984, not 983.6
    x = torch.randn(1, 16, 2 * side, 2 * side, generator=gen)
    txt = torch.randn(1, text_tokens, 4096, generator=gen)
    pooled = torch.randn(1, 768, generator=gen)
    out: dict = {"unmatched_keys": sorted(missing)[:5]}
    for dtype_name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a = _diffusers_forward(ours.to(dtype), x, txt, pooled, sigma, dtype)
        b = _diffsynth_forward(theirs.to(dtype), x, txt, pooled, sigma, dtype)
        out[dtype_name] = {"rel_l2": round(rel_l2(a, b), 6), "out_std": round(float(a.float().std()), 4)}
    # the same bf16 forward with the timestep rounded as FluxPipeline rounds it (bf16 at t*1000, /1000, *1000)
    b = _diffsynth_forward(theirs, x, txt, pooled, sigma, torch.bfloat16, timestep=_pipeline_timestep(sigma))
    out["bfloat16"]["rel_l2_same_timestep"] = round(rel_l2(a, b), 6)
    # 5. fp8 storage, each its own way, against the bf16 output of fluxbot's side.
    from engine.precision import apply_precision

    class _Pipe:  # apply_precision takes a pipeline; only its DiT is cast here
        transformer = ours.to(torch.bfloat16)

    ref = _diffusers_forward(ours, x, txt, pooled, sigma, torch.bfloat16)
    apply_precision(_Pipe, "all-linear")
    a8 = _diffusers_forward(_Pipe.transformer, x, txt, pooled, sigma, torch.bfloat16)
    from diffsynth.models.sd3_dit import RMSNorm

    theirs = theirs.to(torch.float8_e4m3fn)
    norms = {n: m.weight.detach().clone() for n, m in theirs.named_modules() if isinstance(m, RMSNorm)}
    theirs.quantize()
    b8 = _diffsynth_forward(theirs, x, txt, pooled, sigma, torch.bfloat16)
    b8t = _diffsynth_forward(theirs, x, txt, pooled, sigma, torch.bfloat16, timestep=_pipeline_timestep(sigma))
    for name, m in theirs.named_modules():  # the q/k RMSNorm scales back in bf16 (fluxbot keeps them bf16)
        if name.endswith(".module") and name[:-len(".module")] in norms:
            m.weight.data = converted[name[:-len(".module")] + ".weight"].to(torch.bfloat16)
    b8n = _diffsynth_forward(theirs, x, txt, pooled, sigma, torch.bfloat16, timestep=_pipeline_timestep(sigma))
    out["fp8"] = {"fluxbot_vs_bf16_rel_l2": round(rel_l2(a8, ref), 5), "seed_vs_bf16_rel_l2": round(rel_l2(b8, ref), 5),
                  "fluxbot_vs_seed_rel_l2": round(rel_l2(a8, b8), 5),
                  "fluxbot_vs_seed_same_timestep": round(rel_l2(a8, b8t), 5),
                  "fluxbot_vs_seed_same_timestep_bf16_norms": round(rel_l2(a8, b8n), 5)}
    return out


def _diffusers_forward(model, x, txt, pooled, sigma: float, dtype):
    """FluxPipeline's call of the transformer: packed latents, timestep = t.to(latents dtype) / 1000."""
    import torch
    from diffusers import FluxPipeline

    b, c, h, w = x.shape
    with torch.inference_mode():
        packed = FluxPipeline._pack_latents(x.to(dtype), b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", dtype)
        t = torch.tensor([sigma * 1000]).to(dtype)
        out = model(hidden_states=packed, timestep=t / 1000, guidance=torch.full([1], GUIDANCE, dtype=torch.float32),
                    pooled_projections=pooled.to(dtype), encoder_hidden_states=txt.to(dtype),
                    txt_ids=torch.zeros(txt.shape[1], 3, dtype=dtype), img_ids=img_ids, return_dict=False)[0]
        return unpack(out.float(), w * 8, h * 8)


def _pipeline_timestep(sigma: float):
    """The timestep FluxPipeline's transformer embeds: sigma*1000 rounded to bf16, /1000 and *1000 in bf16."""
    import torch

    t = torch.tensor([sigma * 1000]).to(torch.bfloat16) / 1000
    return (t.to(torch.bfloat16) * 1000).float()


def _diffsynth_forward(model, x, txt, pooled, sigma: float, dtype, timestep=None):
    """DiffSynth's lets_dance_flux call: (1, 16, h, w) latents, timestep sigma*1000 in float32 (or `timestep`),
    guidance in the latents' dtype."""
    import torch

    with torch.inference_mode():
        latents = x.to(dtype)
        text_ids = torch.zeros(1, txt.shape[1], 3, dtype=dtype)
        guidance = torch.Tensor([GUIDANCE]).to(dtype=dtype)
        t = timestep if timestep is not None else torch.tensor([sigma * 1000], dtype=torch.float32)
        out = model(latents, t, txt.to(dtype), pooled.to(dtype),
                    guidance, text_ids)
        return out.float()


# ------------------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None):
    ap = pb.row_arguments(__doc__.splitlines()[0], tiny_help="the tiny architecture on the CPU (the smoke)",
                          default_dir="/tmp/peer-bench",
                          save_dir_help="images, noise and latents of every recipe (default DIR/peer-images)")
    ap.add_argument("--all", action="store_true", help="write the files, run every row, compare the outputs")
    ap.add_argument("--cpu-parity", action="store_true", help="noise, schedules and one DiT forward, on the CPU")
    ap.add_argument("--parity", metavar="DIR", help="the parity report of a run's saved images (its --save-dir)")
    args = pb.parse_row_args(ap, argv)
    if args.cpu_parity:
        report = cpu_parity()
        print(json.dumps(report, indent=1))
        return report
    if args.parity:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            write_scheduler(Path(tmp))
            report = parity(Path(args.parity), args.res, args.steps, Path(tmp))
        print(json.dumps(report, indent=1))
        print_parity(report)
        return report
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return []
    return run_all(args)


if __name__ == "__main__":
    main()
