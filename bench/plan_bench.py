"""Plan benchmark (issue 12): the bot's real engine on emulated small PCs, against each plan's physical floor.

On the GPU machine, as root:

    python bench/plan_bench.py --all --dir /tmp/pb --out $OUT/plan.jsonl   # write the files, anchors, every row
    python bench/plan_bench.py --tiny                                         # CPU smoke, the tiny arch, seconds

1. Files: random weights (`randn * 0.02`, never zeros) written to disk in the real layouts: a BFL single-file
   bf16 DiT with FLUX.1-dev's keys and shapes (`flux1-dev.safetensors`), and a FLUX.1-dev base folder with
   CLIP-L (`text_encoder/model.safetensors`), T5-XXL in bf16 sharded like the release (`text_encoder_2/model-
   0000{1,2}-of-00002.safetensors` + index), the VAE, configs, the scheduler and small offline tokenizers
   (engine/tiny.py's: the token ids stay inside the real vocabularies; T5 always encodes 512 tokens).
2. Anchors, same run: pinned host→device bandwidth; page cache → pinned copy bandwidth; cold disk read
   bandwidth (page cache dropped: `echo 3 > /proc/sys/vm/drop_caches`).
3. Rows: each (RAM cap, VRAM cap) runs in a child process inside a cgroup v2 memory limit (`memory.max`, swap
   off) with `torch.cuda.set_per_process_memory_fraction` for the VRAM cap (0.5 GiB of it counted as the CUDA
   context), page cache dropped before it: `Engine.load` from settings (profile auto unless the row forces
   one), one warm-up image (other prompt, 2 steps), then one measured image: new prompt, 1024², 20 steps.
   Recorded: load time, s/image and its phases, the plan's prediction, peak VRAM (max allocated + 0.5 GiB
   context), the child's peak RSS (VmHWM) and its anonymous/file split, the cgroup's `memory.peak` and
   `memory.events` oom_kill. The first child only loads: the first start, which builds the DiT's fp8 cache.
4. Floors: per row, max(DiT compute per step, bytes moved per step over each path / that path's measured
   bandwidth) x steps + encode + decode (resident row's compute, encode and decode; the row's plan says which
   bytes go through which path); and the same with a PCIe 4.0 x16 board's 25 GB/s host→device.
Every row prints one JSON line (starting with '{'); `--all` prints the table last.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.flux_arch import FLUX_DEV, TINY, Arch  # noqa: E402,F401  (public here: peer_bench and lora_bench read them)

log = logging.getLogger("plan_bench")

GiB = 1024 ** 3
CONTEXT_GIB = 0.5       # a real card's CUDA context, counted inside each VRAM cap
PCIE4_H2D = 25e9        # bytes/s host→device of a PCIe 4.0 x16 consumer board
PIXEL_TOLERANCE = 2     # 8-bit levels per channel a plan's image may differ from resident's (docs/engine.md)
PROMPT = "a lighthouse on a cliff above a stormy sea, oil painting"
WARM_PROMPT = "warm up"
CGROUP_ROOT = Path("/sys/fs/cgroup")
DIT_FILE = "flux1-dev.safetensors"
CLIP_PREFIX = "text_model."  # FLUX.1-dev's text_encoder/model.safetensors names every tensor under it
BASE = "FLUX.1-dev"


@dataclass(frozen=True)
class Row:
    name: str
    ram_gib: float        # cgroup memory.max; 0 = no limit
    vram_gib: float       # the card's size (allocator cap = this - CONTEXT_GIB); 0 = no cap
    profile: str = "auto"
    must: str = ""
    load_only: bool = False


# The first start (builds the fp8 cache), the resident reference (the floors need it), the targets, today's
# streamed point.
ROWS = [
    Row("first-start", 16, 0, profile="resident", load_only=True, must="converts the DiT within 16 GiB"),
    Row("resident", 0, 0, profile="resident", must="reference"),
    Row("16/6", 16, 6, must="<= 1.25x floor"), Row("16/8", 16, 8, must="<= 1.25x floor"),
    Row("16/12", 16, 12, must="<= 1.25x floor"), Row("32/8", 32, 8, must="<= 1.25x floor"),
    Row("24/2.5", 24, 2.5, must="<= 1.25x floor, no regression from 5.1 s"),
    Row("64/24", 64, 24, must="<= 1.05x resident"),
    Row("streamed", 0, 3.5, profile="streamed", must="today's point: 1.83 GiB peak allocated, 5.1 s/image"),
]


# ------------------------------------------------------------------------------------------------- files

def write_model(root: Path, arch: Arch, device: str, tokenizers: Path | None = None) -> dict:
    """The DiT single file and the base folder, random bf16 weights, real layouts. Skipped when complete.
    `tokenizers`: a folder with `tokenizer_1` (CLIP) and `tokenizer_2` (T5) to use instead of the tiny offline ones
    (the peer bench gives DiffSynth's own, so that every implementation sees the same token ids)."""
    import torch

    done = root / "complete.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    base = root / BASE
    base.mkdir(parents=True)
    gen = torch.Generator(device).manual_seed(0)
    # 1. Configs, scheduler, tokenizers, model_index.json.
    clip_cls, t5_cls = _write_configs(base, arch, tokenizers)
    # 2. The DiT in BFL layout (names and shapes from the diffusers model through engine/bfl_keys.py's converter),
    #    hashed as it is written: the sidecar engine/models.py would write (hashing 22 GiB at start-up took 44 s
    #    in run 1; that once-per-file cost is reported from there, not paid again by every run).
    sizes = {"dit": _write_random(root / DIT_FILE, _bfl_shapes(arch), gen, device, sidecar=True)}
    # 3. T5-XXL sharded like the release, with its index; CLIP and the VAE in one file each.
    t5_shapes = _state_shapes(lambda: t5_cls(_t5_config(arch)), drop=("encoder.embed_tokens.weight",))
    sizes["t5"] = _write_shards(base / "text_encoder_2", t5_shapes, arch.t5_shards, gen, device)
    #    CLIP's names as the release's file has them (`text_model.` first: transformers 5 drops it when loading;
    #    DiffSynth recognises the file by them).
    clip_shapes = {CLIP_PREFIX + k: s for k, s in _state_shapes(lambda: clip_cls(_clip_config(arch))).items()}
    sizes["clip"] = _write_random(base / "text_encoder" / "model.safetensors", clip_shapes, gen, device)
    from diffusers import AutoencoderKL
    sizes["vae"] = _write_random(base / "vae" / "diffusion_pytorch_model.safetensors",
                                 _state_shapes(lambda: AutoencoderKL(**arch.vae)), gen, device)
    info = {"bytes": sizes, "write_s": round(time.perf_counter() - t0, 1),
            "dit_tensors": len(_bfl_shapes(arch))}
    done.write_text(json.dumps(info))
    return info


def _write_configs(base: Path, arch: Arch, tokenizers: Path | None = None):
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    from engine.tiny import _tiny_tokenizers

    with torch.device("meta"):
        FluxTransformer2DModel(**arch.dit).save_config(base / "transformer")
        AutoencoderKL(**arch.vae).save_config(base / "vae")
    clip_tok, t5_tok = _tokenizers(tokenizers)
    clip_tok.save_pretrained(base / "tokenizer")
    t5_tok.save_pretrained(base / "tokenizer_2")
    _clip_config(arch, clip_tok).save_pretrained(base / "text_encoder")
    _t5_config(arch).save_pretrained(base / "text_encoder_2")
    FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                                    shift=3.0, use_dynamic_shifting=True).save_config(base / "scheduler")
    index = {"_class_name": "FluxPipeline", "_diffusers_version": "0.30.0.dev0",
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
             "tokenizer": ["transformers", type(clip_tok).__name__],
             "tokenizer_2": ["transformers", type(t5_tok).__name__],
             "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (base / "model_index.json").write_text(json.dumps(index, indent=2))
    return CLIPTextModel, T5EncoderModel


def _tokenizers(folder: Path | None):
    """(CLIP, T5) tokenizers: the tiny offline ones, or those saved in `folder`/tokenizer_1 and /tokenizer_2."""
    from engine.tiny import _tiny_tokenizers

    if folder is None:
        return _tiny_tokenizers()
    from transformers import CLIPTokenizer, T5TokenizerFast

    return CLIPTokenizer.from_pretrained(folder / "tokenizer_1"), T5TokenizerFast.from_pretrained(folder / "tokenizer_2")


def _clip_config(arch: Arch, tok=None):
    """The release's config: its `architectures` names the class (DiffSynth and diffusers read it)."""
    from transformers import CLIPTextConfig

    tok = tok or _tokenizers(None)[0]
    return CLIPTextConfig(**arch.clip, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, dtype="bfloat16", architectures=["CLIPTextModel"])


def _t5_config(arch: Arch):
    from transformers import T5Config

    return T5Config(**arch.t5, dtype="bfloat16", architectures=["T5EncoderModel"])


def _bfl_shapes(arch: Arch) -> dict[str, tuple[int, ...]]:
    import torch
    from diffusers import FluxTransformer2DModel

    from engine.bfl_keys import diffusers_to_bfl

    with torch.device("meta"):
        dit = FluxTransformer2DModel(**arch.dit)
    return {k: tuple(v.shape) for k, v in diffusers_to_bfl(dit.state_dict(), dit.config).items()}


def _state_shapes(build, drop: tuple[str, ...] = ()) -> dict[str, tuple[int, ...]]:
    import torch

    with torch.device("meta"):
        model = build()
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in drop}


def _write_random(path: Path, shapes: dict[str, tuple[int, ...]], gen, device: str, *, sidecar: bool = False) -> int:
    """A plain safetensors file (no alignment fillers: the layout torch writes) of random bf16 tensors; with
    `sidecar`, its sha256 in `<file>.sha256` as engine/models.py's file_sha256 keeps it."""
    import hashlib

    import torch

    from engine.mmap_weights import PlannedTensor, StreamingWriter

    planned = [PlannedTensor(k, torch.bfloat16, s) for k, s in shapes.items()]
    h = hashlib.sha256()
    with StreamingWriter(path, planned, {"format": "pt"}, align=1) as w:
        h.update(w.header)  # align=1: the file is the header, then the tensors in this order
        for t in planned:
            x = torch.randn(t.shape, generator=gen, device=device, dtype=torch.float32).mul_(0.02)
            x = x.to(torch.bfloat16).cpu()
            w.write(t.name, x)
            if sidecar:
                h.update(memoryview(x.view(torch.uint8).reshape(-1).numpy()))
        w.commit()
    if sidecar:
        st = path.stat()
        path.with_name(path.name + ".sha256").write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                                                     "sha256": h.hexdigest()}))
    return sum(t.nbytes for t in planned)


def _write_shards(folder: Path, shapes: dict[str, tuple[int, ...]], shards: int, gen, device: str) -> int:
    """`model-0000i-of-0000n.safetensors` of about equal size and `model.safetensors.index.json`."""
    import math

    sizes = {k: math.prod(s) * 2 for k, s in shapes.items()}
    per = sum(sizes.values()) / shards
    groups: list[dict] = [{}]
    acc = 0
    for k, s in shapes.items():
        if acc >= per * len(groups) and len(groups) < shards:
            groups.append({})
        groups[-1][k] = s
        acc += sizes[k]
    weight_map, total = {}, 0
    for i, group in enumerate(groups, start=1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        total += _write_random(folder / name, group, gen, device)
        weight_map.update({k: name for k in group})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}, indent=1))
    return total


# ------------------------------------------------------------------------------------------------ anchors

def measure_anchors(root: Path, device: str, *, sample_bytes: int, may_drop: bool) -> dict:
    """Pinned H2D, page cache → pinned (torch copy from a mapping, and pread), cold disk (same two ways)."""
    import torch

    from engine.mmap_weights import MappedFile

    out: dict = {}
    src = root / DIT_FILE
    mf = MappedFile(src)
    n = min(sample_bytes, mf.storage.nbytes() // 3)
    pinned = torch.empty(n, dtype=torch.uint8, pin_memory=device.startswith("cuda"))
    # 1. Host → device from pinned memory.
    if device.startswith("cuda"):
        dev = torch.empty(n, dtype=torch.uint8, device=device)
        out["h2d_GBps"] = _rate(lambda: (dev.copy_(pinned, non_blocking=True), torch.cuda.synchronize()), n, 5)
    # 2. Cold disk: two different regions, page cache dropped first (root only).
    chunk = 64 << 20
    region = lambda i: torch.empty(0, dtype=torch.uint8).set_(mf.storage, i * n, (n,), (1,))  # noqa: E731
    if may_drop and drop_caches():
        out["disk_cold_mmap_GBps"] = _rate(lambda: _copy_chunks(pinned, region(1), chunk), n, 1)
        out["disk_cold_pread_GBps"] = _rate(lambda: _pread_into(src, 2 * n, pinned), n, 1)
    else:
        out["disk_cold"] = "not measured: dropping the page cache needs root (and is not done with --tiny)"
    # 3. Page cache → pinned: the same regions again, now cached.
    _copy_chunks(pinned, region(0), chunk)
    out["pagecache_copy_GBps"] = _rate(lambda: _copy_chunks(pinned, region(0), chunk), n, 3)
    out["pagecache_pread_GBps"] = _rate(lambda: _pread_into(src, 0, pinned), n, 3)
    out["sample_GiB"] = round(n / GiB, 2)
    if device.startswith("cuda"):  # the rows' children have the card to themselves (run 3: 5.75 GiB stayed here)
        del dev
        torch.cuda.empty_cache()
    return out


def _copy_chunks(dst, src, chunk: int) -> None:
    for i in range(0, src.numel(), chunk):
        dst[i:i + chunk].copy_(src[i:i + chunk])


def _pread_into(path: Path, offset: int, dst) -> None:
    view = memoryview(dst.numpy())
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < len(view):
            done += os.preadv(fd, [view[done:done + (64 << 20)]], offset + done)
    finally:
        os.close(fd)


def _rate(fn, nbytes: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(nbytes / statistics.median(times) / 1e9, 3)


def drop_caches() -> bool:
    """Write back dirty pages and drop the page cache (root only); False when not allowed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------- the child

def child(args) -> dict:
    """One row inside its limits: load the engine from settings, a warm-up image, then the measured image."""
    import torch

    from engine.memory import ALLOC_CONF_VAR, use_expandable_segments
    from engine.mmap_weights import memory_status
    from engine.pipeline import Engine
    from engine.settings import EngineSettings
    from engine.spec import JobSpec

    root, row = Path(args.dir), json.loads(args.child)
    device = "cuda:0" if torch.cuda.is_available() and not args.tiny else "cpu"  # as the bot names its GPUs
    out: dict = {"row": row["name"], "steps": args.steps, "res": args.res}
    # 0. The allocator's setting before CUDA starts, as the bot's engine process does (the VRAM cap below starts
    #    CUDA: torch reads PYTORCH_CUDA_ALLOC_CONF once, then, so Engine.load would be too late here).
    if device != "cpu":
        use_expandable_segments()
        out["alloc_conf"] = os.environ.get(ALLOC_CONF_VAR, "")
    # 1. The VRAM cap: the card's size less its CUDA context is what the allocator may take.
    if row["vram_gib"] and device != "cpu":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction((row["vram_gib"] - CONTEXT_GIB) * GiB / total, 0)
    # 2. Settings as an owner would write them (the budgets: the card's size; RAM detected from the cgroup).
    fields = {f for f in EngineSettings.__dataclass_fields__}
    kw = dict(model=str(root / DIT_FILE), base_model=str(root / BASE), models_dir=str(root), profile=row["profile"],
              devices=[device], images_dir=str(root / "images"), max_sequence_length=args.seq)
    if row["vram_gib"] and "ram_budget_gib" in fields:  # the planner's era: the budget is every plan's VRAM
        kw["vram_budget_gib"] = row["vram_gib"] - CONTEXT_GIB
    settings = EngineSettings(**kw)
    sampler = PeakSampler()
    t0 = time.perf_counter()
    engine = Engine.load(settings, device)
    out["load_s"] = round(time.perf_counter() - t0, 2)
    out["mem_after_load"] = _gib(memory_status())
    out["load_peaks"] = sampler.take()
    out.update(_plan_info(engine))
    if row.get("load_only"):
        return out
    print(json.dumps(out), flush=True)  # what is known so far survives a failure below
    # 3. Warm-up (another prompt, 2 steps), then the measured image: new prompt, all steps; an out-of-memory
    #    retries once on the leaner profile, as engine/worker.py does for the bot's jobs.
    size = args.res
    _job(engine, JobSpec(WARM_PROMPT, seed=1, steps=2, width=size, height=size), out)
    if device != "cpu":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    if getattr(args, "save_dir", None):
        _keep_latents(engine, Path(args.save_dir) / f"{row_file_name(row['name'])}-latents.pt")
    stamps: list[float] = []
    t0 = time.perf_counter()
    result = _job(engine, JobSpec(PROMPT, seed=7, steps=args.steps, width=size, height=size), out,
                  progress=lambda i, n: stamps.append(time.perf_counter()))
    wall = time.perf_counter() - t0
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    t = result.timings
    out.update(image_s=round(t["total"], 3), wall_s=round(wall, 3), encode_s=round(t["encode"], 3),
               decode_s=round(t["decode"], 3), denoise_s=round(t["denoise"], 3),
               s_per_step=round(statistics.median(steps), 4) if steps else round(t["s_per_step"], 4),
               profile=result.profile)
    if device != "cpu":
        out["peak_alloc_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 3)
        out["peak_vram_gib"] = round(out["peak_alloc_gib"] + CONTEXT_GIB, 3)
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GiB, 3)
    out["mem_end"] = _gib(memory_status())
    out["peak_rss_gib"] = out["mem_end"].get("VmHWM")
    out["image_peaks"] = sampler.take()  # warm-up and measured image
    import numpy as np
    pixels = np.asarray(result.images[0])
    out["image_std"] = round(float(pixels.astype(np.float32).std()), 2)  # 0 = a flat image (NaN latents: run 4/5)
    out.update(compare_with_reference(pixels, root / "images", row["name"]))
    if getattr(args, "save_dir", None):  # the peer bench compares the images of every implementation
        out["image_file"] = str(Path(args.save_dir) / f"{row_file_name(row['name'])}.png")
        result.images[0].save(out["image_file"])
    engine.close()
    return out


def _keep_latents(engine, path: Path) -> None:
    """Save the packed latents the next image decodes (float32, CPU): the peer bench compares them."""
    import torch

    decode = engine._decode

    def keep(packed, width, height):
        torch.save(packed.detach().float().cpu(), path)
        return decode(packed, width, height)

    engine._decode = keep


def compare_with_reference(pixels, folder: Path, row: str) -> dict:
    """Save this row's measured image; every row after `resident` (same job, same seed) reports how far its
    8-bit pixels are from resident's: every plan must give resident's pixels (docs/engine.md: at most 2/255)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"plan-bench-{row_file_name(row)}.npy", pixels)
    ref = folder / "plan-bench-resident.npy"
    if row == "resident" or not ref.exists():
        return {}
    diff = np.abs(pixels.astype(np.int16) - np.load(ref).astype(np.int16))
    return {"vs_resident_max": int(diff.max()), "vs_resident_mean": round(float(diff.mean()), 3),
            "pixels_ok": bool(diff.max() <= PIXEL_TOLERANCE)}


def _job(engine, spec, out: dict, progress=None):
    """engine.generate with the worker's rule: on EngineOutOfMemory, move to the suggested leaner profile and
    retry once (recorded in out["oom_retries"]; the retry's plan replaces the prediction)."""
    from engine.errors import EngineOutOfMemory

    try:
        return engine.generate(spec, progress=progress)
    except EngineOutOfMemory as oom:
        out.setdefault("oom_retries", []).append({"from": oom.profile, "to": oom.suggested_profile,
                                                  "job": spec.prompt, "error": str(oom)[:160]})
        print(json.dumps(out), flush=True)
        if not oom.suggested_profile:
            raise
        engine.set_profile(oom.suggested_profile)
        out.update(_plan_info(engine))
        return engine.generate(spec, progress=progress)


class PeakSampler:
    """Peak anonymous and file-backed RSS of this process, and its cgroup's anon/file bytes, sampled every 50 ms
    on a thread (VmHWM alone mixes mapped page cache, which the kernel may drop, with anonymous memory)."""

    def __init__(self, every: float = 0.05):
        import threading

        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._cgroup = _own_cgroup()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def take(self) -> dict:
        """The peaks since the last take (GiB), and start again."""
        peaks, self.peaks = self.peaks, {}
        return {k: round(v / GiB, 3) for k, v in sorted(peaks.items())}

    def _run(self, every: float) -> None:
        from engine.mmap_weights import memory_status

        while not self._stop.wait(every):
            now = {k: v for k, v in memory_status().items() if k in ("RssAnon", "RssFile", "VmRSS")}
            now.update(_cgroup_stat(self._cgroup))
            for k, v in now.items():
                self.peaks[k] = max(self.peaks.get(k, 0), v)


def _own_cgroup() -> Path | None:
    try:
        rel = Path("/proc/self/cgroup").read_text().strip().split("::", 1)[1]
    except (OSError, IndexError):
        return None
    folder = CGROUP_ROOT / rel.lstrip("/")
    return folder if (folder / "memory.stat").exists() and rel != "/" else None


def _cgroup_stat(folder: Path | None) -> dict[str, int]:
    if folder is None:
        return {}
    try:
        stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
        return {"cg_anon": int(stat["anon"]), "cg_file": int(stat["file"]),
                "cg_current": int((folder / "memory.current").read_text())}
    except (OSError, KeyError, ValueError):
        return {}


def _plan_info(engine) -> dict:
    """The plan the engine chose and what it predicted (the planner's era), else the profile only."""
    plan = getattr(engine.plan, "plan", None)
    info: dict = {"profile": engine.profile}
    if plan is None:
        return info
    placement = plan.placement
    counts = {tier: sum(1 for t in placement.dit if t == tier) for tier in ("gpu", "pinned", "disk")}
    info.update(pred_s_per_step=round(plan.s_per_step, 4), pred_s_per_image=round(plan.s_per_image, 2),
                pred_encode_s=round(plan.encode_s, 3), pred_decode_s=round(plan.decode_s, 3),
                pred_peak_vram_gib=round(plan.peak_vram / GiB + CONTEXT_GIB, 2),
                pred_host_ram_gib=round(plan.host_ram / GiB, 2), pred_page_cache_gib=round(plan.page_cache / GiB, 2),
                pred_disk_read_per_step_gib=round(plan.disk_read_per_step / GiB, 3),
                dit_tiers=counts, t5_tiers={t: sum(1 for x in placement.t5 if x == t) for t in ("gpu", "pinned", "disk")},
                clip_tier=placement.clip, vae_tier=placement.vae, summary=plan.summary())
    sizes = getattr(engine, "_sizes", None)
    if sizes is not None:
        blocks, t5 = sizes.dit_blocks, sizes.t5_blocks
        info["moved"] = {
            "dit_pinned": sum(b for b, t in zip(blocks, placement.dit) if t == "pinned"),
            "dit_disk": sum(b for b, t in zip(blocks, placement.dit) if t == "disk"),
            "t5_pinned": sum(b for b, t in zip(t5, placement.t5) if t == "pinned"),
            "t5_disk": sum(b for b, t in zip(t5, placement.t5) if t == "disk"),
            "disk_read_per_step": plan.disk_read_per_step}
    return info


def _gib(status: dict) -> dict:
    return {k: round(v / GiB, 3) for k, v in status.items()}


# --------------------------------------------------------------------------------------------- the parent

def run_row(args, row: Row, script: str | None = None) -> dict:
    """The row in a child process, inside a fresh cgroup when root; reads memory.peak and oom_kill after.
    `script`: the program the child runs (default this one; the peer bench's children take the same arguments)."""
    cg = _make_cgroup(row) if not args.tiny else None
    cmd = [sys.executable, script or os.path.abspath(__file__), "--dir", args.dir, "--res", str(args.res), "--steps",
           str(args.steps), "--seq", str(args.seq), "--child", json.dumps(row.__dict__)] + (["--tiny"] if args.tiny else [])
    if getattr(args, "save_dir", None):
        cmd += ["--save-dir", args.save_dir]
    if not args.tiny:
        drop_caches()
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.row_timeout,
                              preexec_fn=(lambda: (cg / "cgroup.procs").write_text(str(os.getpid()))) if cg else None)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, stdout, stderr = "timeout", e.stdout or "", e.stderr or ""
        stdout, stderr = (s.decode() if isinstance(s, bytes) else s for s in (stdout, stderr))
    got = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    out = got[-1] if got else {"row": row.name}
    out.update(ram_cap_gib=row.ram_gib, vram_cap_gib=row.vram_gib, forced=row.profile, must=row.must, rc=rc,
               child_wall_s=round(time.time() - t0, 1))
    if rc != 0:
        out["error"] = (stderr.strip().splitlines() or ["killed"])[-1][:300]
    if args.log:
        with open(args.log, "a") as fh:
            fh.write(f"\n===== row {row.name} (rc {rc}) =====\n{stderr[-100000:]}")
    if cg is not None:
        out.update(_read_cgroup(cg))
        _remove_cgroup(cg)
    return out


def _run_here(args, row: Row) -> dict:
    """The child's work in this process (the --tiny smoke)."""
    out = child(argparse.Namespace(**{**vars(args), "child": json.dumps(row.__dict__)}))
    out.update(ram_cap_gib=row.ram_gib, vram_cap_gib=row.vram_gib, forced=row.profile, must=row.must, rc=0)
    return out


def row_file_name(name: str) -> str:
    """A row's name as a file or cgroup name ('16/6' -> '16_6')."""
    return name.replace("/", "_").replace("@", "_")


def _make_cgroup(row: Row) -> Path | None:
    """/sys/fs/cgroup/plan-bench-<row>: memory.max = the RAM cap (or max), swap off. None when not possible."""
    cg = CGROUP_ROOT / f"plan-bench-{row_file_name(row.name)}"
    try:
        if "memory" not in (CGROUP_ROOT / "cgroup.subtree_control").read_text():
            (CGROUP_ROOT / "cgroup.subtree_control").write_text("+memory")
        if cg.exists():
            _remove_cgroup(cg)
        cg.mkdir()
        (cg / "memory.max").write_text(f"{int(row.ram_gib * GiB)}\n" if row.ram_gib else "max\n")
        if (cg / "memory.swap.max").exists():
            (cg / "memory.swap.max").write_text("0\n")
        return cg
    except OSError as e:
        log.warning("no cgroup for %s (%s): the row runs without a RAM cap", row.name, e)
        return None


def _read_cgroup(cg: Path) -> dict:
    out: dict = {}
    try:
        out["cgroup_peak_gib"] = round(int((cg / "memory.peak").read_text()) / GiB, 3)
    except (OSError, ValueError):
        pass
    try:
        events = dict(line.split() for line in (cg / "memory.events").read_text().splitlines())
        out["oom_kill"] = int(events.get("oom_kill", 0))
        out["mem_high_events"] = int(events.get("high", 0))
    except (OSError, ValueError):
        pass
    return out


def _remove_cgroup(cg: Path) -> None:
    for _ in range(50):
        try:
            cg.rmdir()
            return
        except OSError:
            time.sleep(0.1)


# ----------------------------------------------------------------------------------------------- floors

def add_floors(rows: list[dict], anchors: dict) -> None:
    """floor = max(DiT compute/step, bytes per step over each path / its bandwidth) x steps + encode + decode.

    Compute, encode and decode come from the resident row of the same run; a row's bytes per path from its plan
    (DiT blocks pinned: H2D; on disk: page cache → pinned, then H2D, and `disk_read_per_step` from the disk
    itself); a streamed T5 adds its bytes over the same paths to the encode, its disk-tier blocks at the cold
    disk's speed too (they are read from the disk at each new prompt: nothing keeps them cached between prompts):
    encode = max(resident encode, (T5 pinned + T5 disk bytes) / H2D, T5 disk bytes / page cache copy, T5 disk
    bytes / cold disk). `pcie4_floor_s` is the same floor
    with 25 GB/s host→device (a PCIe 4.0 x16 board; the H200's compute kept): a computed figure, not measured."""
    ref = next((r for r in rows if r.get("row") == "resident" and "s_per_step" in r), None)
    if ref is None or "h2d_GBps" not in anchors:
        return
    h2d = anchors["h2d_GBps"] * 1e9
    pc = anchors.get("pagecache_copy_GBps", 0) * 1e9 or None
    disk = anchors.get("disk_cold_mmap_GBps", 0) * 1e9 or None
    for r in rows:
        moved = r.get("moved")
        if moved is None or "s_per_step" not in r:
            continue
        for key, bw in (("floor", h2d), ("pcie4_floor", PCIE4_H2D)):
            step = _floor_step(ref["s_per_step"], moved["dit_pinned"], moved["dit_disk"], moved["disk_read_per_step"],
                               bw, pc, disk)
            encode = max(ref["encode_s"], _floor_step(0.0, moved["t5_pinned"], moved["t5_disk"], moved["t5_disk"],
                                                      bw, pc, disk))
            r[f"{key}_s_per_step"] = round(step, 4)
            r[f"{key}_s"] = round(step * r.get("steps", 20) + encode + ref["decode_s"], 3)
        r["x_floor"] = round(r["image_s"] / r["floor_s"], 2)
    for r in rows:
        if "image_s" in r and r.get("row") != "resident":
            r["x_resident"] = round(r["image_s"] / ref["image_s"], 3)


def _floor_step(compute: float, pinned: int, on_disk: int, from_disk: int, h2d: float, pc: float | None,
                disk: float | None) -> float:
    times = [compute, (pinned + on_disk) / h2d]
    if pc:
        times.append(on_disk / pc)
    if disk:
        times.append(from_disk / disk)
    return max(times)


# ------------------------------------------------------------------------------------------------ output

def print_table(rows: list[dict]) -> None:
    head = (f"{'row':12} {'profile':9} {'s/image':>8} {'pred':>6} {'floor':>6} {'x fl':>5} {'s/step':>7} "
            f"{'enc':>5} {'dec':>5} {'VRAM':>6} {'RSS':>6} {'cg peak':>7} {'oom':>3} {'load s':>6} {'pcie4':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "anchors" in r:
            print("anchors:", json.dumps(r["anchors"]))
            continue
        if "image_s" not in r:
            print(f"{r.get('row', '?'):12} {r.get('profile', ''):9} load {r.get('load_s', '-')} s "
                  f"cgroup peak {r.get('cgroup_peak_gib', '-')} oom_kill {r.get('oom_kill', '-')} "
                  f"{r.get('error', '')[:80]}")
            continue
        print(f"{r['row']:12} {r.get('profile', ''):9} {r['image_s']:>8.2f} {r.get('pred_s_per_image', '-'):>6} "
              f"{r.get('floor_s', '-'):>6} {r.get('x_floor', '-'):>5} {r['s_per_step']:>7.3f} {r['encode_s']:>5.2f} "
              f"{r['decode_s']:>5.2f} {r.get('peak_vram_gib', '-'):>6} {r.get('peak_rss_gib', '-'):>6} "
              f"{r.get('cgroup_peak_gib', '-'):>7} {r.get('oom_kill', '-'):>3} {r.get('load_s', '-'):>6} "
              f"{r.get('pcie4_floor_s', '-'):>6}")


def markdown(jsonl: str) -> str:
    """The docs table of a saved run (its `final` line): one row per machine, measured next to predicted."""
    lines = [json.loads(line) for line in open(jsonl) if line.startswith("{")]
    final = [line["final"] for line in lines if "final" in line]
    rows = final[-1] if final else []
    anchors = next((line["anchors"] for line in lines if "anchors" in line), {})
    add_floors(rows, anchors)            # this harness's floors from the run's own anchors (older runs included)
    out = ["| RAM cap / card | plan | s/image | predicted | floor | x floor | x resident | s/step | encode s | "
           "decode s | peak VRAM GiB (pred) | peak RSS GiB: anon / file | cgroup memory.peak GiB | oom_kill | "
           "load s | PCIe 4.0 floor s | image vs resident |",
           "|" + "---|" * 17]
    for r in rows:
        cap = f"{r.get('ram_cap_gib') or '-'} / {r.get('vram_cap_gib') or '-'}"
        if "image_s" not in r:
            what = f"load only: {r['load_s']} s" if "load_s" in r and "error" not in r else r.get("error", "?")[:120]
            out.append(f"| {r['row']} ({cap}) | {r.get('profile', '')} | {what} |" + " |" * 9
                       + f" {r.get('cgroup_peak_gib', '')} | {r.get('oom_kill', '')} | {r.get('load_s', '')} | | |")
            continue
        peaks = r.get("image_peaks", {})
        out.append(
            f"| {r['row']} ({cap}) | {r.get('summary', r.get('profile', '')).split(';')[0]} | **{r['image_s']:.2f}** | "
            f"{r.get('pred_s_per_image', '–')} | {r.get('floor_s', '–')} | {r.get('x_floor', '–')} | "
            f"{r.get('x_resident', '–')} | {r['s_per_step']:.3f} | {r['encode_s']:.2f} | {r['decode_s']:.2f} | "
            f"{r.get('peak_vram_gib', '–')} ({r.get('pred_peak_vram_gib', '–')}) | "
            f"{peaks.get('RssAnon', '–')} / {peaks.get('RssFile', '–')} | {r.get('cgroup_peak_gib', '–')} | "
            f"{r.get('oom_kill', '–')} | {r.get('load_s', '–')} | {r.get('pcie4_floor_s', '–')} | {_pixels(r)} |")
    return "\n".join(out)


def _pixels(r: dict) -> str:
    """The image check of a row: flat (NaN latents), max |Δ| to resident's pixels, or its std alone."""
    if r.get("image_std") == 0:
        return "**flat image (NaN)**"
    if "vs_resident_max" in r:
        return f"max Δ {r['vs_resident_max']}/255 ({'ok' if r['pixels_ok'] else '**differs**'})"
    return f"std {r['image_std']}" if "image_std" in r else "–"


def plot(png: str, runs: list[str]) -> None:
    """s/image against the emulated card's VRAM, coloured by its RAM cap: measured rows filled, the plan's
    prediction hollow, rows that failed as crosses at their prediction. `runs`: JSONL files of runs; a run's
    `<name>-rows.log` beside it supplies the predictions of rows whose child died before reporting them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = {16: "tab:red", 24: "tab:orange", 32: "tab:green", 64: "tab:blue", 0: "black"}
    for run in runs:
        name = Path(run).stem
        predicted = _predictions_from_log(Path(run).with_name(f"{name}-rows.log"))
        for r in _final_rows(run):
            if r.get("row") == "first-start" or "skipped" in r.get("error", ""):
                continue
            pred = r.get("pred_s_per_image") or predicted.get(r["row"])
            vram = r.get("vram_cap_gib") or r.get("peak_vram_gib") or 0
            color = colors.get(int(r.get("ram_cap_gib") or 0), "gray")
            label = f"{r['row']} [{name.removeprefix('plan-')}]"
            if "image_s" in r:
                ax.plot(vram, r["image_s"], "o", color=color)
                flat = " (flat NaN image)" if r.get("image_std") == 0 else ""
                ax.annotate(f"{label}: {r['image_s']:.2f} s{flat}", (vram, r["image_s"]), fontsize=7, xytext=(4, 3),
                            textcoords="offset points")
                if pred:
                    ax.plot(vram, pred, "o", mfc="none", color=color)
            elif pred:
                ax.plot(vram, pred, "x", color=color, markersize=9)
                ax.annotate(f"{label}: {_short_error(r)}", (vram, pred), fontsize=7, xytext=(4, -9),
                            textcoords="offset points")
    for ram, color in colors.items():
        ax.plot([], [], "s", color=color, label=f"RAM cap {ram} GiB" if ram else "no RAM cap")
    ax.plot([], [], "o", color="gray", label="measured")
    ax.plot([], [], "o", mfc="none", color="gray", label="predicted by the plan")
    ax.plot([], [], "x", color="gray", label="failed (at its prediction)")
    ax.set_xlabel("VRAM of the emulated card, GiB (cap incl. 0.5 GiB context; uncapped rows: measured peak)")
    ax.set_ylabel("s/image, 1024², 20 steps, new prompt")
    ax.set_title("fluxbot on emulated PCs (H200, FLUX.1-dev architecture, random weights)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def _final_rows(jsonl: str) -> list[dict]:
    lines = [json.loads(line) for line in open(jsonl) if line.startswith("{")]
    final = [x["final"] for x in lines if "final" in x]
    return final[-1] if final else [x for x in lines if "row" in x]


def _predictions_from_log(path: Path) -> dict[str, float]:
    """{row: predicted s/image} from the engine's "engine ready: …, N s/image" line of each row's log."""
    import re

    out: dict[str, float] = {}
    if not path.exists():
        return out
    row = None
    for line in path.read_text().splitlines():
        if line.startswith("===== row "):
            row = line.split()[2]
        m = re.search(r"engine ready: .*?, ([0-9.]+) s/image", line)
        if row and m and row not in out:
            out[row] = float(m.group(1))
    return out


def _short_error(r: dict) -> str:
    err = r.get("error", "")
    return "GPU OOM" if "OutOfMemory" in err else (err.split(":")[0][:30] or "failed")


def row_arguments(description: str, *, tiny_help: str, default_dir: str,
                  save_dir_help: str) -> argparse.ArgumentParser:
    """A parser with the arguments of a bench that runs rows through `run_row` (this one and bench/peer_bench.py):
    the mode, where the files are, which rows, the image each row makes, the row timeout and the run's deadline, and
    where rows, logs and images go; `--child` is how `run_row` starts a row's process. Parse with `parse_row_args`."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--tiny", action="store_true", help=tiny_help)
    ap.add_argument("--dir", default=default_dir, help="where the model files are written")
    ap.add_argument("--only", default="",
                    help="comma-separated row names to run, in this order (first-start always runs first)")
    ap.add_argument("--res", type=int, default=None, help="image side in pixels (default 1024; --tiny 256)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seq", type=int, default=512, help="T5 tokens ([engine] max_sequence_length)")
    ap.add_argument("--row-timeout", type=int, default=300)
    ap.add_argument("--deadline", type=float, default=0, help="seconds: skip rows that would start after this")
    ap.add_argument("--out", help="append every row here as JSON lines")
    ap.add_argument("--log", help="append each child's stderr (the engine's log) to this file")
    ap.add_argument("--save-dir", help=save_dir_help)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    return ap


def parse_row_args(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`ap`'s arguments with the image's size by architecture and --tiny's short run (at most 2 steps and 32 T5
    tokens); logging set up for the engine's lines."""
    args = ap.parse_args(argv)
    if args.res is None:
        args.res = 256 if args.tiny else 1024
    if args.tiny:
        args.steps, args.seq = min(args.steps, 2), min(args.seq, 32)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    ap = row_arguments(__doc__.splitlines()[0], tiny_help="the tiny architecture on the CPU, no limits (seconds)",
                       default_dir="/tmp/plan-bench", save_dir_help="save each row's measured image here as <row>.png")
    ap.add_argument("--all", action="store_true", help="write the files, measure the anchors, run every row")
    ap.add_argument("--sample-gib", type=float, default=4.0, help="bytes of each bandwidth anchor")
    ap.add_argument("--plot", nargs="+", metavar="FILE", help="PNG then the runs' JSONL files: plot them")
    ap.add_argument("--markdown", metavar="JSONL", help="print the docs table of a saved run")
    args = parse_row_args(ap, argv)
    if args.plot:
        plot(args.plot[0], args.plot[1:])
        return []
    if args.markdown:
        print(markdown(args.markdown))
        return []
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return []
    return run_all(args)


def run_all(args) -> list[dict]:
    import torch

    t_start = time.time()
    chosen = chosen_rows(args.only)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    root = Path(args.dir)
    # 1. Files, then the anchors (page cache dropped where allowed).
    files = write_model(root, TINY if args.tiny else FLUX_DEV, device)
    if device == "cuda":
        torch.cuda.empty_cache()
    anchors = measure_anchors(root, device, sample_bytes=int(args.sample_gib * GiB), may_drop=not args.tiny)
    head = {"anchors": anchors, "files": files, "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
            "torch": torch.__version__}
    _emit(args, head)
    # 2. The rows (the tiny smoke runs the first start, resident and one auto row).
    rows: list[dict] = []
    if args.tiny:  # in this process: no limits to apply, and seconds matter
        chosen = [Row("first-start", 0, 0, load_only=True), Row("auto", 0, 0)]
    for row in chosen:
        if args.deadline and time.time() - t_start > args.deadline:
            rows.append({"row": row.name, "error": "skipped: the run's deadline passed"})
            continue
        rows.append(_run_here(args, row) if args.tiny else run_row(args, row))
        _emit(args, rows[-1])
    # 3. Floors and ratios, then the table.
    add_floors(rows, anchors)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(json.dumps({"final": rows}) + "\n")
    print_table([head] + rows)
    return [head] + rows


def chosen_rows(only: str) -> list[Row]:
    """The first start, then the rows named in `only` (comma-separated) in that order, or every row."""
    by_name = {r.name: r for r in ROWS}
    wanted = [name for name in only.split(",") if name]
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise SystemExit(f"--only: unknown row(s) {', '.join(unknown)}; the rows are {', '.join(by_name)}")
    first = [r for r in ROWS if r.load_only]
    return first + [r for r in ([by_name[n] for n in wanted] if wanted else ROWS) if not r.load_only]


def _emit(args, row: dict) -> None:
    print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
