"""Engine benchmark: diffusers' low-memory recipes and fluxbot's memory profiles, same machine, same run.

The real FLUX.1-dev architecture (CLIP-L, T5-XXL, the 12B DiT, the VAE) with random weights (`randn * 0.02`,
never zeros): big models are built on the meta device and materialised with `to_empty` on the GPU. fp8
storage comes from engine/precision.py and fluxbot's profiles from engine/memory.py (engine/streamer.py),
exactly as the bot runs them.

    python bench/engine_bench.py --all --out bench.json        # every recipe, one subprocess each, one table
    python bench/engine_bench.py --recipe pipe:fluxbot-streamed  # one recipe in this process (JSON lines)
    python bench/engine_bench.py --tiny --all                  # CPU, tiny model, seconds (CI keeps it alive)
    python bench/engine_bench.py --fast --out fast.json        # compute recipes vs the anchors (bench/fast_bench.py)

Recipes: `pipe:*` run the whole pipeline (new prompt encode, `--steps` steps, decode) for one image;
`dit:*` time DiT steps only (random embeddings) at `--batch`; `h2d` measures pinned host→device bandwidth.
Every measurement prints one JSON line starting with '{'; `--all` prints the table last.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.flux_arch import FLUX_DEV, TINY, Arch  # noqa: E402  (multigpu_bench and fast_bench read them here)
from engine import memory  # noqa: E402
from engine.precision import apply_precision, dit_bytes  # noqa: E402
from engine.settings import EngineSettings  # noqa: E402

log = logging.getLogger(__name__)

GiB = 1024 ** 3
PROMPT = "a red fox in a snowy forest at dawn, photo"
WARM_PROMPT = "warm up"
PREFETCH = int(os.environ.get("FLUXBOT_BENCH_PREFETCH", EngineSettings().stream_prefetch))
if os.environ.get("FLUXBOT_BENCH_MERGE") == "0":  # A/B of single-block pairing in the streamed profile
    import engine.streamer_flux
    engine.streamer_flux.MERGE_GROUPS = False


# The full suite: (recipe, extra args). Pipeline recipes at batch 1; DiT recipes at batch 1 and 4.
SUITE = [
    ("check", []), ("h2d", []),
    ("dit:fluxbot-resident", ["--batch", "1"]), ("dit:fluxbot-resident", ["--batch", "4"]),
    ("dit:fluxbot-streamed", ["--batch", "1", "--budgets", "0,2,4,6,8,12,16"]),
    ("dit:fluxbot-streamed", ["--batch", "4"]),
    ("dit:diffusers-group-block", ["--batch", "1"]), ("dit:diffusers-group-block", ["--batch", "4"]),
    ("dit:diffusers-group-leaf", ["--batch", "1"]),
    ("pipe:fluxbot-streamed", ["--cap-gib", "3"]),
    ("pipe:fluxbot-resident", []), ("pipe:fluxbot-model-offload", []),
    ("pipe:diffusers-group-offload", []), ("pipe:diffusers-model-offload", []),
]
CUDA_ONLY = ("h2d", "dit:diffusers-group-block", "dit:diffusers-group-leaf", "pipe:diffusers-group-offload",
             "pipe:diffusers-model-offload", "pipe:fluxbot-model-offload")


# ------------------------------------------------------------------------------------------------ building

def _randomize(module: torch.nn.Module, device: torch.device, seed: int) -> None:
    """Every parameter = randn * 0.02 (never zeros: zeros hide unwritten memory and run faster)."""
    gen = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, device=device, generator=gen).mul_(0.02).to(p.dtype))


def _materialize(build, device: torch.device, seed: int):
    """Build on the meta device (no memory), allocate on `device`, fill with random weights."""
    with torch.device("meta"):
        model = build()
    model = model.to(torch.bfloat16).to_empty(device=device)
    _randomize(model, device, seed)
    return model.eval()


def build_pipeline(arch: Arch, device: torch.device, *, dit_only: bool = False):
    """A FluxPipeline with FLUX.1-dev's architecture (or the tiny one) and random bf16 weights on `device`."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from engine.tiny import _tiny_tokenizers

    # 1. The DiT and T5 (no buffers) through meta; CLIP (position ids buffer) and the VAE built plainly.
    dit = _materialize(lambda: FluxTransformer2DModel(**arch.dit), device, 1)
    scheduler = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096,
                                                max_shift=1.15, shift=3.0, use_dynamic_shifting=True)
    if dit_only:
        return FluxPipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                            tokenizer_2=None, transformer=dit)
    clip_tok, t5_tok = _tiny_tokenizers()  # small offline vocabularies; ids stay inside the real ones
    t5 = _materialize(lambda: T5EncoderModel(T5Config(**arch.t5)), device, 2)
    clip = CLIPTextModel(CLIPTextConfig(**arch.clip, eos_token_id=clip_tok.eos_token_id)).to(device, torch.bfloat16)
    _randomize(clip, device, 3)
    vae = AutoencoderKL(**arch.vae).to(device, torch.bfloat16)
    _randomize(vae, device, 4)
    return FluxPipeline(scheduler=scheduler, vae=vae.eval(), text_encoder=clip.eval(), tokenizer=clip_tok,
                        text_encoder_2=t5, tokenizer_2=t5_tok, transformer=dit)


# --------------------------------------------------------------------------------------------- placement

def place(pipe, recipe: str, device: torch.device, budget_gib: float = 0.0):
    """Put the weights where `recipe` wants them; returns (execution device, fluxbot plan or None)."""
    from diffusers.hooks import apply_group_offloading

    kind = recipe.split(":", 1)[1]
    if kind.startswith("fluxbot-"):
        settings = EngineSettings(profile=kind[len("fluxbot-"):], vram_budget_gib=budget_gib,
                                  stream_prefetch=PREFETCH)
        plan = memory.apply_profile(pipe, settings.profile, str(device), settings)
        return memory.execution_device(pipe, plan), plan
    models = [m for m in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, pipe.vae) if m is not None]
    for m in models:
        m.to("cpu")
    _free(device)
    if kind == "diffusers-model-offload":
        pipe.enable_model_cpu_offload(device=device)
    elif kind == "diffusers-group-block":
        apply_group_offloading(pipe.transformer, onload_device=device, offload_type="block_level",
                               num_blocks_per_group=1, use_stream=True)
    elif kind == "diffusers-group-leaf":
        apply_group_offloading(pipe.transformer, onload_device=device, offload_type="leaf_level", use_stream=True)
    elif kind == "diffusers-group-offload":  # DESIGN.md's best diffusers recipe: DiT block level, rest leaf level
        apply_group_offloading(pipe.transformer, onload_device=device, offload_type="block_level",
                               num_blocks_per_group=1, use_stream=True)
        for m in models[1:]:
            apply_group_offloading(m, onload_device=device, offload_type="leaf_level", use_stream=True)
        if pipe.vae is not None:
            pipe.vae.enable_tiling()
    else:
        raise SystemExit(f"unknown recipe {recipe!r}")
    return pipe._execution_device, None


# ----------------------------------------------------------------------------------------------- timing

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float:
    return round(torch.cuda.max_memory_allocated(device) / GiB, 3) if device.type == "cuda" else 0.0


def _rss_gib() -> float:
    import psutil
    return round(psutil.Process().memory_info().rss / GiB, 2)


def _max_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 2)


def denoise(pipe, device, *, embeds, pooled, steps: int, res: int, batch: int) -> tuple[torch.Tensor, list[float]]:
    """`steps` denoising steps; returns packed latents and the seconds of each step."""
    stamps: list[float] = []

    def on_step_end(_pipe, _i, _t, kwargs):
        _sync(device)
        stamps.append(time.perf_counter())
        return kwargs

    _sync(device)
    stamps.append(time.perf_counter())
    out = pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=res, width=res, num_inference_steps=steps,
               guidance_scale=3.5, generator=torch.Generator("cpu").manual_seed(0), output_type="latent",
               callback_on_step_end=on_step_end, num_images_per_prompt=1)
    return out.images, [b - a for a, b in zip(stamps, stamps[1:])]


def denoise_loop(pipe, device, *, embeds, pooled, steps: int, res: int, batch: int) -> float:
    """Seconds of a `steps`-step denoise with one device sync at the end (none per step: a per-step sync would also
    wait for a streamed plan's prefetch of the next step's first blocks on the copy stream)."""
    _sync(device)
    t = time.perf_counter()
    pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=res, width=res, num_inference_steps=steps,
         guidance_scale=3.5, generator=torch.Generator("cpu").manual_seed(0), output_type="latent",
         num_images_per_prompt=batch)
    _sync(device)
    return time.perf_counter() - t


def _held(pipe, device) -> dict:
    """Allocated GiB now and, for fluxbot's streamed profile, what each unit holds on the device."""
    out = {"allocated": round(torch.cuda.memory_allocated(device) / GiB, 3) if device.type == "cuda" else 0.0}
    for unit in getattr(pipe, "_bench_units", []):
        out[unit.name] = round(unit.device_bytes() / GiB, 3)
    return out


def run_image(pipe, device, *, prompt: str, steps: int, res: int) -> dict:
    """One whole image: encode a new prompt, denoise, decode. Seconds of each phase."""
    peaks = {}
    # 1. Encode (the prompt is new, so both text encoders run).
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        pe, pooled, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=device, max_sequence_length=512)
    _sync(device)
    t1 = time.perf_counter()
    peaks["encode"] = _peak_gib(device)
    held = {}
    held["after_encode"] = _held(pipe, device)
    # 2. Denoise.
    _reset_peak(device)
    lat, step_s = denoise(pipe, device, embeds=pe.to(device, torch.bfloat16), pooled=pooled.to(device, torch.bfloat16),
                          steps=steps, res=res, batch=1)
    _sync(device)
    t2 = time.perf_counter()
    peaks["denoise"] = _peak_gib(device)
    held["after_denoise"] = _held(pipe, device)
    # 3. Decode.
    _reset_peak(device)
    with torch.inference_mode():
        lat = pipe._unpack_latents(lat, res, res, pipe.vae_scale_factor)
        lat = lat / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        img = pipe.vae.decode(lat.to(device, torch.bfloat16), return_dict=False)[0]
    _sync(device)
    t3 = time.perf_counter()
    peaks["decode"] = _peak_gib(device)
    held["after_decode"] = _held(pipe, device)
    return dict(encode_s=round(t1 - t0, 4), denoise_s=round(t2 - t1, 3), decode_s=round(t3 - t2, 4),
                image_s=round(t3 - t0, 3), s_per_step=round(statistics.median(step_s[1:] or step_s), 4),
                finite=bool(torch.isfinite(img.float()).all()), phase_peak_gib=peaks,
                peak_gib=max(peaks.values()), held=held)


def dit_bytes_streamed(plan) -> int:
    return plan.streamers[0].arena.nbytes if plan is not None and plan.streamers else 0


def streamed_bytes(plan) -> dict:
    """Host bytes each fluxbot streamer unit holds (what a step/encode must copy)."""
    if plan is None:
        return {}
    return {u.name: u.arena.nbytes for u in plan.streamers if getattr(u, "arena", None) is not None}


# ----------------------------------------------------------------------------------------------- recipes

def recipe_h2d(args, device) -> list[dict]:
    """Pinned host→device copy bandwidth (2 GiB, median of 5)."""
    x = torch.empty(2 * GiB, dtype=torch.uint8).pin_memory()
    y = torch.empty_like(x, device=device)
    times = []
    for _ in range(7):
        _sync(device)
        t = time.perf_counter()
        y.copy_(x, non_blocking=True)
        _sync(device)
        times.append(time.perf_counter() - t)
    row = dict(recipe="h2d", GBps=round(2 * GiB / statistics.median(times[2:]) / 1e9, 1))
    # The same from a cudaHostRegister-ed buffer, the kind the streamer's arena uses.
    from engine.streamer import HostArena
    arena = HostArena(2 * GiB, device)
    arena.buffer.fill_(1)
    times = []
    for _ in range(7):
        _sync(device)
        t = time.perf_counter()
        y.copy_(arena.buffer, non_blocking=True)
        _sync(device)
        times.append(time.perf_counter() - t)
    row.update(registered_GBps=round(2 * GiB / statistics.median(times[2:]) / 1e9, 1), registered=arena.registered)
    arena.close()
    print(json.dumps(row), flush=True)
    return [row]


def recipe_check(args, device) -> list[dict]:
    """Streamed output equals resident output on the device, and no block is left on the device after."""
    arch = TINY
    pipe = build_pipeline(arch, device, dit_only=True)
    apply_precision(pipe, "all-linear")
    dit = pipe.transformer
    gen = torch.Generator("cpu").manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 64, 64, generator=gen), encoder_hidden_states=torch.randn(
        1, 512, arch.dit["joint_attention_dim"], generator=gen), pooled_projections=torch.randn(
        1, arch.dit["pooled_projection_dim"], generator=gen), timestep=torch.tensor([0.5]), img_ids=torch.zeros(64, 3),
        txt_ids=torch.zeros(512, 3), guidance=torch.tensor([3.5]))
    inputs = {k: v.to(device, torch.bfloat16 if v.dtype == torch.float32 and v.dim() > 1 and "ids" not in k else v.dtype)
              for k, v in inputs.items()}
    with torch.inference_mode():
        ref = dit(**inputs).sample.float()
        exec_device, plan = place(pipe, "dit:fluxbot-streamed", device, 0.0)
        outs = [dit(**inputs).sample.float() for _ in range(3)]
    _sync(device)
    blocks = list(dit.transformer_blocks) + list(dit.single_transformer_blocks)
    on_device = sum(p.device.type != "cpu" for b in blocks for p in b.parameters())
    row = dict(recipe="check", max_abs_diff=max(float((o - ref).abs().max()) for o in outs),
               block_params_on_device_after=on_device, bytes_copied=plan.streamers[0].bytes_copied)
    print(json.dumps(row), flush=True)
    return [row]


def recipe_dit(args, device, recipe: str) -> list[dict]:
    """DiT steps only, random prompt embeddings; fluxbot-streamed sweeps `--budgets` in one process."""
    arch = TINY if args.tiny else FLUX_DEV
    pipe = build_pipeline(arch, device, dit_only=True)
    apply_precision(pipe, "all-linear")
    pipe.vae_scale_factor = 8
    gen = torch.Generator("cpu").manual_seed(0)
    embeds = torch.randn(args.batch, 512, arch.dit["joint_attention_dim"], generator=gen).to(device, torch.bfloat16)
    pooled = torch.randn(args.batch, arch.dit["pooled_projection_dim"], generator=gen).to(device, torch.bfloat16)
    budgets = [float(b) for b in args.budgets.split(",")] if recipe == "dit:fluxbot-streamed" else [0.0]
    rows, plan = [], None
    for budget in budgets:
        # 1. Place (a new budget re-streams the same weights).
        if plan is not None:
            plan.release()
        _free(device)
        exec_device, plan = place(pipe, recipe, device, budget)
        _free(device)
        # 2. Warm up, then time.
        denoise(pipe, exec_device, embeds=embeds, pooled=pooled, steps=2, res=args.res, batch=args.batch)
        _reset_peak(device)
        streamer = plan.streamers[0] if plan is not None and plan.streamers else None
        if streamer is not None and args.trace:
            streamer.start_trace()
        _, step_s = denoise(pipe, exec_device, embeds=embeds, pooled=pooled, steps=args.dit_steps, res=args.res,
                            batch=args.batch)
        trace = streamer.trace_summary() if streamer is not None and args.trace else {}
        if streamer is not None:
            streamer.trace = None
        row = dict(recipe=recipe, batch=args.batch, res=args.res, budget_gib=budget, prefetch=PREFETCH,
                   merge=os.environ.get("FLUXBOT_BENCH_MERGE", "1"),
                   s_per_step=round(statistics.median(step_s[1:]), 4), peak_gib=_peak_gib(device),
                   rss_gib=_rss_gib(), dit_gib=round(dit_bytes(pipe.transformer) / GiB, 2))
        if trace:
            if args.trace_out:
                with open(args.trace_out, "a") as fh:
                    fh.write(json.dumps(dict(prefetch=PREFETCH, budget=budget, timeline=trace["timeline"])) + "\n")
            trace.pop("timeline")
            row.update({k: (round(v / args.dit_steps, 1) if k.endswith("_ms") else v) for k, v in trace.items()},
                       copy_GBps=round(dit_bytes_streamed(plan) * args.dit_steps / (trace["copy_busy_ms"] / 1e3) / 1e9, 1)
                       if trace.get("copy_busy_ms") else None)
        if plan is not None and plan.streamers:
            dit = plan.streamers[0]
            row.update(streamed_gib=round(dit.arena.nbytes / GiB, 2), resident_blocks=len(dit.resident))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def recipe_pipe(args, device, recipe: str) -> list[dict]:
    """The whole pipeline for one image; optional per-process VRAM cap (a small card)."""
    arch = TINY if args.tiny else FLUX_DEV
    rss0 = _rss_gib()
    pipe = build_pipeline(arch, device)
    apply_precision(pipe, "all-linear")
    exec_device, plan = place(pipe, recipe, device)
    pipe._bench_units = plan.streamers if plan is not None else []
    _free(device)
    rss_placed = _rss_gib()
    if args.cap_gib and device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(args.cap_gib * GiB / total, torch.cuda.current_device())
    try:
        run_image(pipe, exec_device, prompt=WARM_PROMPT, steps=1, res=args.res)
        _reset_peak(device)
        row = run_image(pipe, exec_device, prompt=PROMPT, steps=args.steps, res=args.res)
    except torch.OutOfMemoryError as err:
        row = dict(oom=str(err)[:200])
    row.setdefault("peak_gib", _peak_gib(device))
    row.update(recipe=recipe, res=args.res, steps=args.steps, cap_gib=args.cap_gib,
               rss_before_gib=rss0, rss_placed_gib=rss_placed, max_rss_gib=_max_rss_gib(),
               vae_tiling=bool(getattr(pipe.vae, "use_tiling", False)),
               streamed_gib={k: round(v / GiB, 2) for k, v in streamed_bytes(plan).items()})
    print(json.dumps(row), flush=True)
    return [row]


def run_recipe(args, recipe: str) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type == "cpu" and recipe in CUDA_ONLY:
        row = dict(recipe=recipe, skipped="needs a CUDA device")
        print(json.dumps(row), flush=True)
        return [row]
    if recipe == "h2d":
        return recipe_h2d(args, device)
    if recipe == "check":
        return recipe_check(args, device)
    if recipe.startswith("dit:"):
        return recipe_dit(args, device, recipe)
    if recipe.startswith("pipe:"):
        return recipe_pipe(args, device, recipe)
    if recipe == "fast:restart":
        import fast_bench  # lazy: only the fast suite's child needs it (bench/ is on sys.path as the script's folder)
        return fast_bench.restart_child(args, sys.modules[__name__])
    if recipe == "fast:kernel":
        import fast_bench  # lazy, as above
        return fast_bench.kernel_child(args, sys.modules[__name__])
    raise SystemExit(f"unknown recipe {recipe!r}")


# ------------------------------------------------------------------------------------------------- suite

def run_suite(args) -> list[dict]:
    """Every recipe of SUITE (filtered by --only); one subprocess each on a GPU, in-process with --tiny."""
    rows: list[dict] = []
    for recipe, extra in SUITE:
        if args.only and not any(key in recipe for key in args.only.split(",")):
            continue
        sub = build_parser().parse_args(_common_argv(args) + ["--recipe", recipe] + extra)
        if args.tiny:
            rows += run_recipe(sub, recipe)
            continue
        cmd = [sys.executable, os.path.abspath(__file__)] + _common_argv(args) + ["--recipe", recipe] + extra
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        sys.stderr.write(proc.stderr[-3000:] if proc.returncode else "")
        got = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode and not got:
            got = [dict(recipe=recipe, error=(proc.stderr.strip().splitlines() or ["?"])[-1][:200])]
        for row in got:
            row["wall_s"] = round(time.time() - t0, 1)
            print(json.dumps(row), flush=True)
        rows += got
    return rows


def _common_argv(args) -> list[str]:
    argv = ["--res", str(args.res), "--steps", str(args.steps), "--dit-steps", str(args.dit_steps)]
    return argv + (["--tiny"] if args.tiny else [])


def add_floor(rows: list[dict]) -> None:
    """Ratio of each timing to the floor: max(resident compute, streamed bytes / measured H2D bandwidth)."""
    bw = next((r["GBps"] * 1e9 for r in rows if r.get("recipe") == "h2d" and "GBps" in r), None)
    compute = {r["batch"]: r["s_per_step"] for r in rows if r.get("recipe") == "dit:fluxbot-resident"}
    streamed = next((r for r in rows if r.get("recipe") == "dit:fluxbot-streamed" and "streamed_gib" in r), None)
    if not bw or not compute or streamed is None:
        return
    dit_bytes_ = streamed["streamed_gib"] * GiB
    for r in rows:
        if "s_per_step" not in r or "batch" not in r and not r.get("recipe", "").startswith("pipe:"):
            continue
        batch = r.get("batch", 1)
        if batch not in compute:
            continue
        floor = max(compute[batch], dit_bytes_ / bw)
        r["floor_s_per_step"] = round(floor, 4)
        r["x_floor"] = round(r["s_per_step"] / floor, 2)
        if r.get("recipe", "").startswith("pipe:"):
            r["x_floor_image"] = round(r["image_s"] / (r["steps"] * floor), 2)


def print_table(rows: list[dict]) -> None:
    head = f"{'recipe':32} {'b':>2} {'budget':>6} {'s/step':>7} {'s/image':>8} {'enc s':>6} {'dec s':>6} " \
           f"{'peak GiB':>8} {'RSS GiB':>8} {'x floor':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        if "GBps" in r:
            print(f"{'h2d pinned':32} {r['GBps']:>6.1f} GB/s")
            continue
        if "skipped" in r or "error" in r or "oom" in r or "s_per_step" not in r:
            print(f"{r.get('recipe', '?'):32} {r.get('skipped') or r.get('error') or 'OOM: ' + r.get('oom', '?')[:60]}")
            continue
        image = r.get("image_s")
        print(f"{r['recipe']:32} {r.get('batch', 1):>2} {r.get('budget_gib', ''):>6} {r['s_per_step']:>7.3f} "
              f"{image if image is not None else '':>8} {r.get('encode_s', ''):>6} {r.get('decode_s', ''):>6} "
              f"{r.get('peak_gib', 0):>8.2f} {r.get('max_rss_gib', r.get('rss_gib', 0)):>8} "
              f"{r.get('x_floor', ''):>7}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", help="one recipe, in this process")
    ap.add_argument("--all", action="store_true", help="every recipe of the suite and a table")
    ap.add_argument("--only", default="", help="with --all or --fast (and --kernels): comma-separated substrings "
                    "of the recipes / parts to keep")
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU (seconds)")
    ap.add_argument("--res", type=int, default=None)
    ap.add_argument("--steps", type=int, default=20, help="steps of a whole-pipeline image")
    ap.add_argument("--dit-steps", type=int, default=6, help="timed steps of a dit:* recipe")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--budgets", default="0", help="dit:fluxbot-streamed: VRAM budgets in GiB, comma-separated")
    ap.add_argument("--cap-gib", type=float, default=0.0, help="pipe:*: torch.cuda per-process memory cap")
    ap.add_argument("--trace", action="store_true", help="dit:fluxbot-streamed: copy/compute busy time per step")
    ap.add_argument("--trace-out", help="with --trace: append the last pass's copy/compute timeline here")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per subprocess with --all")
    ap.add_argument("--out", help="write every row as JSON here")
    ap.add_argument("--fast", action="store_true", help="the compute suite (bench/fast_bench.py): compile and fp8 "
                    "compute against diffusers' anchors, drift, batch 4, streamed plans, restart warm-up")
    ap.add_argument("--kernels", action="store_true", help="--fast: each compute recipe (and fp8 kernel) in its own "
                    "fresh process: s/step at batch 1 and 4, compile warm-up, drift of the final latents")
    ap.add_argument("--restart-compute", default="bf16", choices=("bf16", "fp8", "weights-bf16"), help=argparse.SUPPRESS)
    ap.add_argument("--kernel-eager", action="store_true", help=argparse.SUPPRESS)   # fast:kernel: no compile
    ap.add_argument("--latents-out", help=argparse.SUPPRESS)                          # fast:kernel: final latents
    ap.add_argument("--restart-kernel", default="row", help=argparse.SUPPRESS)   # fast:restart's recipe (fast_bench)
    ap.add_argument("--budget-gib", type=float, default=10.0, help="--fast: vram_budget_gib of the budgeted plan")
    ap.add_argument("--deadline-s", type=float, default=0.0, help="--fast: skip the parts that would end after this "
                    "many seconds (0: none)")
    return ap


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    if args.res is None:
        args.res = 64 if args.tiny else 1024
    if args.tiny:
        args.steps, args.dit_steps = min(args.steps, 2), min(args.dit_steps, 3)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.fast:
        import fast_bench  # lazy: only the fast suite needs it (bench/ is on sys.path as the script's folder)
        rows = (fast_bench.run_kernels if args.kernels else fast_bench.run)(args, sys.modules[__name__])
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(rows, fh, indent=1)
        return rows
    if args.all:
        rows = run_suite(args)
        add_floor(rows)
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(rows, fh, indent=1)
        print_table(rows)
        return rows
    if not args.recipe:
        raise SystemExit("give --recipe NAME or --all")
    return run_recipe(args, args.recipe)


if __name__ == "__main__":
    main()
