"""Fast compute (issue 13): fluxbot's compute recipes against the field's anchors, one GPU, one process, one run.

The FLUX.1-dev architecture with random weights (bench/engine_bench.py builds it), 1024², everything measured on
the same weights and inputs, in this order (each row is printed as a JSON line as soon as it is measured, so a
run stopped midway keeps what it measured):
 1. `sdpa`: the attention kernels SDPA offers at the DiT's shape (24 heads x 4608 tokens x 128): flash, cuDNN,
    memory-efficient; the fastest is named.
 2. the eager anchor on bf16 weights (before any fp8 cast): `diffusers-bf16-eager` (DiT s/step and a 20-step
    image, the drift reference of fp8 storage).
 3. fp8 storage (`all-linear`), the `resident` plan, fluxbot's compute recipes (RECIPES: bf16 eager — the drift
    reference —, bf16 compiled, fp8 compiled with each fp8 kernel of engine/fp8_compute.py's FP8_KERNELS): DiT
    s/step at batch 1, a whole 20-step image (encode, denoise, decode), compile warm-up, and the drift of the final
    latents and of the decoded image (relative L2, PSNR) against fp8-storage/bf16-compute eager
    (`fluxbot-bf16-eager`), and of that against bf16 weights.
 4. the fastest bf16 and the fastest fp8 recipe at batch 4.
 5. `profile`: where a step's GPU time goes for those two (GEMM, attention, inductor's Triton kernels, other).
 6. compile warm-up of a restart, for bf16 and the fastest fp8 kernel: two child processes on an empty inductor
    cache (cold) and on the cache the first one left (warm).
 7. pinned host->device bandwidth, then the `streamed` plan (no DiT block resident) and a budgeted one
    (`vram_budget_gib`, most blocks resident) with the engine's default recipe (fp8, DEFAULT_KERNEL, compiled; the
    fastest resident recipe if that one did not run): s/step against their floor max(its resident s/step,
    streamed bytes / bandwidth).
 8. the compiled anchor, `diffusers-bf16-compile` (`compile_repeated_blocks(fullgraph=True)`), on a DiT rebuilt
    with the same seed (the same bf16 weights); then `torchao-fp8-compile`: the same with torchao's
    `Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())` (flux-fast's recipe; carried as a wheel in
    `.whl-ao/`; last, because torchao changes inductor's settings for the rest of the process).
`--deadline-s` skips the parts that would not end in time (a row says so); `--only` runs just the parts whose names
contain one of its comma-separated words (e.g. `--only diffusers-bf16-eager,fluxbot-bf16-eager,row-fast-tq,streamed`:
the drift references, the default kernel's image and drift, then the streamed and budgeted plans with it).

    python bench/engine_bench.py --fast --out fast.json       # on the GPU (bench/run_device.sh passes --fast)
    python bench/engine_bench.py --fast --tiny                # CPU smoke: tiny model, aot_eager, seconds
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from engine import memory
from engine.compile import compile_blocks, uncompile_blocks
from engine.fp8_compute import DEFAULT_KERNEL, Fp8Linear, UpcastLinear, swap_linears
from engine.precision import apply_precision, dit_bytes
from engine.recipe import compute_name
from engine.settings import EngineSettings
from engine.streamer_flux import dit_blocks

GiB = 1024 ** 3
PROMPT = "a red fox in a snowy forest at dawn, photo"
# (compute, fp8 kernel, compiled), in the order measured: the drift reference first, then the candidates.
RECIPES = (("bf16", None, False), ("bf16", None, True), ("fp8", "row", True), ("fp8", "row-fast", True),
           ("fp8", "tensor-fast", True), ("fp8", "row-fast-tq", True))


def recipe_name(compute: str, kernel: str | None, compiled: bool) -> str:
    """fluxbot-bf16-eager, fluxbot-fp8-compile (the `row` kernel), fluxbot-fp8.row-fast-compile, ...: the compute
    named as the engine's recipe names it (engine/recipe.py's compute_name)."""
    label = compute_name(compute, kernel)
    return f"fluxbot-{label}-{'compile' if compiled else 'eager'}"


class Bench:
    """One run's shared state: the pipeline, the arguments, the rows and the reference outputs."""

    def __init__(self, args, eb):
        self.args, self.eb = args, eb          # eb: the engine_bench module (its builders and timers)
        self.tiny = args.tiny
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
        self.backend = "aot_eager" if self.device.type == "cpu" else "inductor"
        self.res = args.res
        self.steps = args.steps
        self.rows: list[dict] = []
        self.refs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}   # recipe -> (latents, image)
        self.t0 = time.perf_counter()

    # ------------------------------------------------------------------------------------------ plumbing
    def emit(self, **row) -> dict:
        row["t_s"] = round(time.perf_counter() - self.t0, 1)
        print(json.dumps(row), flush=True)
        self.rows.append(row)
        return row

    def guarded(self, name: str, fn, *a, needs_s: float = 0.0, **k):
        """Run one part; an exception becomes an error row and the run goes on. A part that would not end before
        `--deadline-s` (it needs about `needs_s`) is skipped with a row that says so."""
        wanted = [w for w in getattr(self.args, "only", "").split(",") if w]
        if wanted and not any(w in name for w in wanted):
            return None          # `--only`: the parts whose names contain one of its words
        left = self.args.deadline_s - (time.perf_counter() - self.t0)
        if self.args.deadline_s and left < needs_s:
            self.emit(recipe=name, skipped=f"{left:.0f} s left before the deadline, needs ~{needs_s:.0f} s")
            return None
        try:
            return fn(*a, **k)
        except Exception as err:  # noqa: BLE001 - one failed part must not lose the others
            self.emit(recipe=name, error=f"{type(err).__name__}: {str(err)[:300]}")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------------------------------ measuring
    def inputs(self, batch: int):
        arch = self.arch
        gen = torch.Generator("cpu").manual_seed(0)
        embeds = torch.randn(batch, 512, arch.dit["joint_attention_dim"], generator=gen).to(self.device, torch.bfloat16)
        pooled = torch.randn(batch, arch.dit["pooled_projection_dim"], generator=gen).to(self.device, torch.bfloat16)
        return embeds, pooled

    def loop_s_per_step(self, steps: int = 10) -> float:
        """Seconds per step of a `steps`-step denoise (after a 2-step warm-up) timed as a whole: one device sync at
        the end, none per step, as the engine runs a job."""
        embeds, pooled = self.inputs(1)
        run = dict(embeds=embeds, pooled=pooled, res=self.res, batch=1)
        self.eb.denoise_loop(self.pipe, self.device, steps=2, **run)
        return self.eb.denoise_loop(self.pipe, self.device, steps=steps, **run) / steps

    def dit_steps(self, batch: int = 1, steps: int | None = None) -> tuple[float, float]:
        """(median s/step over timed steps, seconds of the 2-step warm-up call: includes any compile)."""
        embeds, pooled = self.inputs(batch)
        t = time.perf_counter()
        self.eb.denoise(self.pipe, self.device, embeds=embeds, pooled=pooled, steps=2, res=self.res, batch=batch)
        self.sync()
        warm = time.perf_counter() - t
        _, step_s = self.eb.denoise(self.pipe, self.device, embeds=embeds, pooled=pooled,
                                    steps=steps or self.args.dit_steps, res=self.res, batch=batch)
        return statistics.median(step_s[1:] or step_s), warm

    def image(self) -> dict:
        """One whole image (new prompt encode, `steps` steps, untiled decode): seconds per phase, and the final
        latents and decoded image (float32, on the CPU) for the drift figures."""
        pipe, dev = self.pipe, self.device
        self.sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            pe, pooled, _ = pipe.encode_prompt(prompt=PROMPT, prompt_2=None, device=dev, max_sequence_length=512)
        self.sync()
        t1 = time.perf_counter()
        lat, step_s = self.eb.denoise(pipe, dev, embeds=pe.to(dev, torch.bfloat16),
                                      pooled=pooled.to(dev, torch.bfloat16), steps=self.steps, res=self.res, batch=1)
        self.sync()
        t2 = time.perf_counter()
        with torch.inference_mode():
            unpacked = pipe._unpack_latents(lat, self.res, self.res, pipe.vae_scale_factor)
            unpacked = unpacked / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
            img = pipe.vae.decode(unpacked.to(dev, torch.bfloat16), return_dict=False)[0]
        self.sync()
        t3 = time.perf_counter()
        img01 = ((img.float().clamp(-1, 1) + 1) / 2).cpu()
        return dict(encode_s=round(t1 - t0, 4), denoise_s=round(t2 - t1, 3), decode_s=round(t3 - t2, 4),
                    image_s=round(t3 - t0, 3), image_s_per_step=round(statistics.median(step_s[1:] or step_s), 4),
                    finite=bool(torch.isfinite(img).all()), latents=lat.float().cpu(), img=img01)

    def drift(self, name: str, out: dict) -> dict:
        """Relative L2 of the latents and the image, and the image's PSNR, against the references."""
        self.refs[name] = (out.pop("latents"), out.pop("img"))
        lat, img = self.refs[name]
        figures = {}
        for ref_name in ("fluxbot-bf16-eager", "diffusers-bf16-eager"):
            if ref_name not in self.refs or ref_name == name:
                continue
            ref_lat, ref_img = self.refs[ref_name]
            key = "vs_fp8_storage" if ref_name.startswith("fluxbot") else "vs_bf16_weights"
            mse = float(((img - ref_img) ** 2).mean())
            figures[key] = dict(latent_rel_l2=round(float((lat - ref_lat).norm() / ref_lat.norm()), 5),
                                image_rel_l2=round(float((img - ref_img).norm() / ref_img.norm()), 5),
                                image_psnr_db=round(10 * math.log10(1.0 / mse), 2) if mse > 0 else None)
        return figures

    # ------------------------------------------------------------------------------------------ parts
    def build(self) -> None:
        self.arch = self.eb.TINY if self.tiny else self.eb.FLUX_DEV
        self.pipe = self.eb.build_pipeline(self.arch, self.device)
        self.pipe.vae_scale_factor = 8

    def sdpa(self) -> None:
        if self.device.type != "cuda":
            return
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        heads, tokens = self.arch.dit["num_attention_heads"], (self.res // 16) ** 2 + 512
        q = torch.randn(1, heads, tokens, self.arch.dit["attention_head_dim"], device=self.device, dtype=torch.bfloat16)
        times = {}
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
            try:
                with sdpa_kernel([backend]):
                    times[backend.name] = _cuda_time(lambda: F.scaled_dot_product_attention(q, q, q))
            except RuntimeError as err:
                times[backend.name] = f"refused: {str(err)[:80]}"
        with torch.no_grad():
            default = _cuda_time(lambda: F.scaled_dot_product_attention(q, q, q))
        ok = {k: v for k, v in times.items() if isinstance(v, float)}
        self.emit(recipe="sdpa", tokens=tokens, ms={k: round(v * 1e3, 3) if isinstance(v, float) else v
                                                  for k, v in times.items()},
                  default_ms=round(default * 1e3, 3), best=min(ok, key=ok.get) if ok else None,
                  per_step_ms_best=round(min(ok.values()) * 57 * 1e3, 1) if ok else None)

    def anchor_eager(self) -> None:
        """diffusers' eager recipe on bf16 weights (also the bf16-weights drift reference)."""
        s, warm = self.dit_steps()
        out = self.image()
        self.drift("diffusers-bf16-eager", out)
        self.emit(recipe="diffusers-bf16-eager", batch=1, s_per_step=round(s, 4), warm_s=round(warm, 1),
                  dit_gib=round(dit_bytes(self.pipe.transformer) / GiB, 2), **out)

    def anchor_compile(self) -> None:
        """diffusers' compile_repeated_blocks(fullgraph=True) on bf16 weights: a DiT rebuilt with the same seed
        (the same weights as the eager anchor's), after fluxbot's rows."""
        fluxbot_pipe = self.pipe
        self.pipe = self.eb.build_pipeline(self.arch, self.device, dit_only=True)
        self.pipe.vae_scale_factor = 8
        dit = self.pipe.transformer
        self.compile_like_diffusers()
        s, warm = self.dit_steps()
        self.emit(recipe="diffusers-bf16-compile", batch=1, s_per_step=round(s, 4), warm_s=round(warm, 1))
        del dit
        self.pipe = fluxbot_pipe
        memory.free_device_cache()

    def anchor_torchao(self) -> None:
        """diffusers + torchao (`Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`, its defaults:
        fast accumulation, torchao's inductor settings) + `compile_repeated_blocks(fullgraph=True)`, on a DiT
        rebuilt with the same seed: the recipe behind flux-fast. Skipped with a row if torchao is not installed."""
        try:
            import torchao
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
        except ImportError as err:
            self.emit(recipe="torchao-fp8-compile", skipped=f"torchao not installed ({err})")
            return
        fluxbot_pipe = self.pipe
        self.pipe = self.eb.build_pipeline(self.arch, self.device, dit_only=True)
        self.pipe.vae_scale_factor = 8
        dit = self.pipe.transformer
        quantize_(dit, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
        self.compile_like_diffusers()
        s, warm = self.dit_steps()
        self.emit(recipe="torchao-fp8-compile", batch=1, s_per_step=round(s, 4), warm_s=round(warm, 1),
                  torchao=torchao.__version__)
        del dit
        self.pipe = fluxbot_pipe
        memory.free_device_cache()

    def compile_like_diffusers(self) -> None:
        """The DiT's `compile_repeated_blocks(fullgraph=True)` on a GPU; on the CPU each block compiled the same way
        with the CPU's backend."""
        if self.device.type == "cuda":
            self.pipe.transformer.compile_repeated_blocks(fullgraph=True)
        else:
            for block in dit_blocks(self.pipe):
                block.compile(fullgraph=True, backend=self.backend)

    def to_fp8_resident(self) -> None:
        apply_precision(self.pipe, "all-linear", "bf16", hooks=False)
        self.linears = [m for m in self.pipe.transformer.modules() if isinstance(m, (UpcastLinear, Fp8Linear))]
        self.plan = memory.apply_profile(self.pipe, "resident", str(self.device), EngineSettings(profile="resident"))

    def set_recipe(self, compute: str, kernel: str | None, compiled: bool) -> None:
        swap_linears(self.linears, compute, kernel or DEFAULT_KERNEL)
        blocks = dit_blocks(self.pipe)
        uncompile_blocks(blocks)
        if compiled:
            compile_blocks(blocks, backend=self.backend)

    def fluxbot_resident(self, compute: str, kernel: str | None, compiled: bool) -> None:
        name = recipe_name(compute, kernel, compiled)
        self.set_recipe(compute, kernel, compiled)
        _reset_peak(self.device)
        s, warm = self.dit_steps()
        out = self.image()
        figures = self.drift(name, out)
        self.emit(recipe=name, plan="resident", batch=1, compute=compute, kernel=kernel, compiled=compiled,
                  s_per_step=round(s, 4), warm_s=round(warm, 1),
                  fp8_linears=sum(isinstance(m, Fp8Linear) for m in self.linears), drift=figures,
                  peak_gib=_peak(self.device), **out)

    def resident_rows(self, compute: str | None = None) -> list[dict]:
        return [r for r in self.rows if r.get("plan") == "resident" and r.get("batch") == 1 and "s_per_step" in r
                and "compiled" in r and (compute is None or r["compute"] == compute)]

    def best(self, compute: str | None = None) -> dict | None:
        """The fastest fluxbot resident batch-1 row that ran (of `compute`, if given)."""
        ran = self.resident_rows(compute)
        return min(ran, key=lambda r: r["s_per_step"]) if ran else None

    def batch4(self, compute: str) -> None:
        row = self.best(compute)
        if row is None:
            self.emit(recipe=f"batch4-{compute}", skipped=f"no {compute} recipe ran at batch 1")
            return
        self.set_recipe(row["compute"], row["kernel"], row["compiled"])
        _reset_peak(self.device)
        s, warm = self.dit_steps(batch=4)
        self.emit(recipe=row["recipe"], plan="resident", batch=4, s_per_step=round(s, 4), warm_s=round(warm, 1),
                  x_batch1=round(s / row["s_per_step"], 2), peak_gib=_peak(self.device))

    def profile(self, compute: str) -> None:
        """Where a step's GPU time goes for the fastest `compute` recipe: CUDA kernel time per step by kind (GEMM,
        attention, inductor's fused Triton kernels, copies, other) and the top kernels (torch.profiler, 2 steps)."""
        row = self.best(compute)
        if row is None or self.device.type != "cuda":
            return
        from torch.profiler import ProfilerActivity, profile

        self.set_recipe(row["compute"], row["kernel"], row["compiled"])
        embeds, pooled = self.inputs(1)
        self.eb.denoise(self.pipe, self.device, embeds=embeds, pooled=pooled, steps=2, res=self.res, batch=1)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            self.eb.denoise(self.pipe, self.device, embeds=embeds, pooled=pooled, steps=2, res=self.res, batch=1)
            self.sync()
        kinds: dict[str, float] = {}
        kernels = []
        for evt in prof.key_averages():
            us = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0)
            if not us or evt.key.startswith("ProfilerStep"):
                continue
            kind = _kernel_kind(evt.key)
            kinds[kind] = kinds.get(kind, 0.0) + us / 2e3          # ms per step (2 steps)
            kernels.append((us / 2e3, evt.count // 2, kind, evt.key[:90]))
        kernels.sort(reverse=True)
        self.emit(recipe="profile", of=row["recipe"], ms_per_step={k: round(v, 2) for k, v in sorted(kinds.items())},
                  total_ms=round(sum(kinds.values()), 2),
                  top=[dict(ms=round(ms, 2), calls=n, kind=k, name=name) for ms, n, k, name in kernels[:14]])

    def plan_recipe(self) -> dict | None:
        """The resident row whose recipe the streamed and budgeted plans run: the engine's default on a GPU (fp8
        compute, DEFAULT_KERNEL, compiled) where it ran, else the fastest that ran (the default kernel's row is not
        the fastest on the CPU, where eager bf16 wins)."""
        default = [r for r in self.resident_rows("fp8") if r["kernel"] == DEFAULT_KERNEL and r["compiled"]]
        return default[0] if default else self.best()

    def streamed(self) -> None:
        best = self.plan_recipe()
        if best is None:
            self.emit(recipe="streamed", skipped="no resident recipe ran (its s/step is the plans' compute floor)")
            return
        bw = None
        if self.device.type == "cuda":
            bw = self.eb.recipe_h2d(self.args, self.device)[0]["GBps"] * 1e9
        name, compute = best["recipe"], best["s_per_step"]
        # The resident compute timed as a whole loop too (one sync at the end, as the engine runs a job): a per-step
        # device sync also waits for the copy stream's prefetch of the next step's first blocks (run fin3's trace:
        # ~14 ms a step at a 10 GiB budget), which a job never waits for.
        self.set_recipe(best["compute"], best["kernel"], best["compiled"])
        compute_loop = self.loop_s_per_step()
        for label, budget in (("streamed", 0.0), ("budgeted", 0.0 if self.tiny else self.args.budget_gib)):
            self.plan.release()
            memory.free_device_cache()
            settings = EngineSettings(profile="streamed", vram_budget_gib=budget,
                                      stream_prefetch=EngineSettings().stream_prefetch)
            self.plan = memory.apply_profile(self.pipe, "streamed", str(self.device), settings)
            self.set_recipe(best["compute"], best["kernel"], best["compiled"])
            _reset_peak(self.device)
            s, warm = self.dit_steps()
            unit = self.plan.streamers[0]
            streamed = unit.arena.nbytes + unit.disk_bytes
            floor = max(compute or 0.0, streamed / bw if bw else 0.0)
            loop = self.loop_s_per_step()
            floor_loop = max(compute_loop, streamed / bw if bw else 0.0)
            self.emit(recipe=name, plan=label, budget_gib=budget, batch=1, compute=best["compute"],
                      kernel=best["kernel"], compiled=best["compiled"], s_per_step=round(s, 4),
                      warm_s=round(warm, 1), resident_blocks=len(unit.resident),
                      streamed_gib=round(streamed / GiB, 2), floor_s_per_step=round(floor, 4) if floor else None,
                      x_floor=round(s / floor, 2) if floor else None, loop_s_per_step=round(loop, 4),
                      resident_loop_s_per_step=round(compute_loop, 4), loop_floor_s_per_step=round(floor_loop, 4),
                      x_floor_loop=round(loop / floor_loop, 2), peak_gib=_peak(self.device))

    def restarts(self, compute: str, kernel: str) -> None:
        """Compile warm-up in a new process: cold (empty inductor cache), then warm (the cache it left)."""
        cache = tempfile.mkdtemp(prefix="fluxbot-inductor-")
        for label in ("cold", "warm"):
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
            cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "engine_bench.py"),
                   "--recipe", "fast:restart", "--res", str(self.res), "--restart-compute", compute,
                   "--restart-kernel", kernel] + (["--tiny"] if self.tiny else [])
            t = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=self.args.timeout)
            except subprocess.TimeoutExpired:
                self.emit(recipe="compile-restart", cache=label, error=f"timed out after {self.args.timeout} s")
                return
            got = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
            row = got[-1] if got else dict(error=(proc.stderr.strip().splitlines() or ["?"])[-1][:300])
            row.pop("recipe", None)
            self.emit(recipe="compile-restart", cache=label, process_s=round(time.perf_counter() - t, 1), **row)


def restart_child(args, eb) -> list[dict]:
    """(child process) Build the DiT, fp8 storage, `--restart-compute` (and kernel) + compile, resident; time the
    first step (compile or cache load) and the next ones. TORCHINDUCTOR_CACHE_DIR comes from the parent."""
    bench, built = _child_bench(args, eb, args.restart_compute, args.restart_kernel, compiled=True)
    embeds, pooled = bench.inputs(1)
    t = time.perf_counter()
    _, step_s = eb.denoise(bench.pipe, bench.device, embeds=embeds, pooled=pooled, steps=3, res=bench.res, batch=1)
    row = dict(recipe="fast:restart", compute=args.restart_compute, kernel=args.restart_kernel, build_s=round(built, 1), first_step_s=round(step_s[0], 2),
               warm_up_s=round(step_s[0] - statistics.median(step_s[1:]), 2),
               s_per_step=round(statistics.median(step_s[1:]), 4), cache_dir=os.environ.get("TORCHINDUCTOR_CACHE_DIR"))
    print(json.dumps(row), flush=True)
    return [row]


# `--kernels`: each recipe in its own fresh process (one recipe per process, as the engine runs; no graphs of another
# recipe around), on the same seeded weights and inputs: (name, compute or "weights-bf16", fp8 kernel, compiled).
KERNEL_RECIPES = (("fluxbot-bf16-eager", "bf16", None, False),          # the drift reference (fp8 storage)
                  ("diffusers-bf16-eager", "weights-bf16", None, False),  # bf16 weights: fp8 storage's own drift
                  ("diffusers-bf16-compile", "weights-bf16", None, True),  # the compiled anchor
                  ("fluxbot-bf16-compile", "bf16", None, True),
                  ("fluxbot-fp8-compile", "fp8", "row", True),
                  ("fluxbot-fp8.row-fast-compile", "fp8", "row-fast", True),
                  ("fluxbot-fp8.tensor-fast-compile", "fp8", "tensor-fast", True),
                  ("fluxbot-fp8.row-fast-tq-compile", "fp8", "row-fast-tq", True))


def kernel_child(args, eb) -> list[dict]:
    """(child process) One recipe (`--restart-compute`: bf16 | fp8 | weights-bf16, `--restart-kernel`, compiled
    unless `--kernel-eager`): first steps (compile), DiT s/step at batch 1 and batch 4, then 20 steps from the
    fixed inputs whose final latents go to `--latents-out` (the parent's drift figures)."""
    # 1. The recipe: diffusers' bf16 weights (compile_repeated_blocks), or fluxbot's fp8 storage + compute.
    compute, compiled = args.restart_compute, not args.kernel_eager
    bench, built = _child_bench(args, eb, compute, args.restart_kernel, compiled=compiled)
    # 2. Warm-up (compile), then the timed steps at batch 1 and batch 4.
    s1, warm1 = bench.dit_steps(1)
    s4, warm4 = bench.dit_steps(4, steps=3)
    # 3. 20 steps from the fixed inputs: the final latents, for the drift.
    embeds, pooled = bench.inputs(1)
    lat, step_s = eb.denoise(bench.pipe, bench.device, embeds=embeds, pooled=pooled, steps=bench.steps,
                             res=bench.res, batch=1)
    torch.save(lat.float().cpu(), args.latents_out)
    row = dict(recipe="fast:kernel", compute=compute, kernel=args.restart_kernel if compute == "fp8" else None,
               compiled=compiled, build_s=round(built, 1), warm_s=round(warm1, 1), s_per_step=round(s1, 4),
               batch4_s_per_step=round(s4, 4), batch4_warm_s=round(warm4, 1), x_batch1=round(s4 / s1, 2),
               denoise_s=round(sum(step_s), 3), peak_gib=_peak(bench.device))
    print(json.dumps(row), flush=True)
    return [row]


def _child_bench(args, eb, compute: str, kernel: str, *, compiled: bool) -> tuple[Bench, float]:
    """(child process) A Bench holding a fresh DiT (the seeded weights) with one recipe: `compute` "weights-bf16"
    (diffusers' bf16 weights, compiled as diffusers does), or fluxbot's fp8 storage with compute "bf16" or "fp8"
    (`kernel`), resident, compiled per block; and the seconds the DiT took to build."""
    bench = Bench(args, eb)
    bench.arch = eb.TINY if args.tiny else eb.FLUX_DEV
    t = time.perf_counter()
    bench.pipe = eb.build_pipeline(bench.arch, bench.device, dit_only=True)
    bench.pipe.vae_scale_factor = 8
    built = time.perf_counter() - t
    if compute == "weights-bf16":
        if compiled:
            bench.compile_like_diffusers()
        return bench, built
    apply_precision(bench.pipe, "all-linear", compute, hooks=False)
    linears = [m for m in bench.pipe.transformer.modules() if isinstance(m, (UpcastLinear, Fp8Linear))]
    swap_linears(linears, compute, kernel)
    bench.plan = memory.apply_profile(bench.pipe, "resident", str(bench.device), EngineSettings(profile="resident"))
    if compiled:
        compile_blocks(dit_blocks(bench.pipe), backend=bench.backend)
    return bench, built


def run_kernels(args, eb) -> list[dict]:
    """`--kernels`: every KERNEL_RECIPES entry in a fresh child process (one shared inductor cache), then the drift
    of each one's final latents against fluxbot-bf16-eager (fp8 storage) and against diffusers-bf16-eager (bf16
    weights), and a table."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="fluxbot-inductor-kernels-"))
    bench = Bench(args, eb)
    work = tempfile.mkdtemp(prefix="fluxbot-kernels-")
    latents: dict[str, torch.Tensor] = {}
    wanted = [w for w in args.only.split(",") if w]
    for name, compute, kernel, compiled in KERNEL_RECIPES:
        if wanted and not any(w == name or w in name for w in wanted):
            continue
        left = args.deadline_s - (time.perf_counter() - bench.t0)
        if args.deadline_s and left < 50:
            bench.emit(recipe=name, skipped=f"{left:.0f} s left before the deadline")
            continue
        out = os.path.join(work, f"{name}.pt")
        cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "engine_bench.py"),
               "--recipe", "fast:kernel", "--res", str(args.res), "--steps", str(args.steps), "--dit-steps",
               str(args.dit_steps), "--restart-compute", compute, "--restart-kernel", kernel or DEFAULT_KERNEL,
               "--latents-out", out] + (["--kernel-eager"] if not compiled else []) + (["--tiny"] if args.tiny else [])
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            bench.emit(recipe=name, error=f"timed out after {args.timeout} s")
            continue
        got = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        if not got:
            bench.emit(recipe=name, error=(proc.stderr.strip().splitlines() or ["?"])[-1][:300])
            continue
        row = got[-1]
        row.pop("recipe", None)
        latents[name] = torch.load(out)
        drift = {}
        for ref_name, key in (("fluxbot-bf16-eager", "vs_fp8_storage"), ("diffusers-bf16-eager", "vs_bf16_weights")):
            if ref_name in latents and ref_name != name:
                ref = latents[ref_name]
                drift[key] = round(float((latents[name] - ref).norm() / ref.norm()), 5)
        bench.emit(recipe=name, process_s=round(time.perf_counter() - t, 1), latent_drift=drift, **row)
    print(f"{'recipe':34} {'s/step':>7} {'b4 s/step':>9} {'x b1':>5} {'warm s':>6}  latent drift")
    for r in bench.rows:
        if "s_per_step" in r:
            print(f"{r['recipe']:34} {r['s_per_step']:>7} {r['batch4_s_per_step']:>9} {r['x_batch1']:>5} "
                  f"{r['warm_s']:>6}  {r['latent_drift']}")
    return bench.rows


def run(args, eb) -> list[dict]:
    """The whole fast suite in this process (the restarts in children); returns the rows."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="fluxbot-inductor-main-"))
    bench = Bench(args, eb)
    bench.build()
    bench.guarded("sdpa", bench.sdpa)
    bench.guarded("diffusers-bf16-eager", bench.anchor_eager)
    bench.to_fp8_resident()
    for compute, kernel, compiled in RECIPES:
        bench.guarded(recipe_name(compute, kernel, compiled), bench.fluxbot_resident, compute, kernel, compiled,
                      needs_s=45 if compiled else 12)
    for compute in ("bf16", "fp8"):
        bench.guarded(f"batch4-{compute}", bench.batch4, compute, needs_s=35)
    for compute in ("fp8", "bf16"):
        bench.guarded(f"profile-{compute}", bench.profile, compute, needs_s=20)
    bench.guarded("restarts-bf16", bench.restarts, "bf16", DEFAULT_KERNEL, needs_s=90)
    fp8 = bench.best("fp8")
    if fp8:
        bench.guarded("restarts-fp8", bench.restarts, "fp8", fp8["kernel"], needs_s=90)
    bench.guarded("streamed", bench.streamed, needs_s=60)
    bench.guarded("diffusers-bf16-compile", bench.anchor_compile, needs_s=40)
    bench.guarded("torchao-fp8-compile", bench.anchor_torchao, needs_s=60)   # last: it sets inductor's config
    print_fast_table(bench.rows)
    return bench.rows


def _kernel_kind(name: str) -> str:
    """A CUDA kernel's kind from its name (cuBLAS/CUTLASS GEMMs, cuDNN/flash attention, inductor's Triton)."""
    low = name.lower()
    if any(k in low for k in ("fmha", "flash", "attention", "cudnn")):
        return "attention"
    if any(k in low for k in ("gemm", "cutlass", "xmma", "nvjet", "_mm", "matmul", "sm90")):
        return "gemm"
    if low.startswith("triton"):
        return "triton"
    if "memcpy" in low or "memset" in low or "copy" in low:
        return "copy"
    return "other"


def print_fast_table(rows: list[dict]) -> None:
    head = f"{'recipe':26} {'plan':9} {'b':>2} {'s/step':>7} {'s/image':>8} {'warm s':>7} {'x floor':>7}  drift"
    print(head)
    print("-" * len(head))
    for r in rows:
        if "s_per_step" not in r or r.get("recipe") == "fast:restart":
            continue
        drift = r.get("drift") or {}
        text = "; ".join(f"{k}: lat {v['latent_rel_l2']} img {v['image_rel_l2']} {v['image_psnr_db']} dB"
                         for k, v in drift.items())
        print(f"{r['recipe']:26} {r.get('plan', ''):9} {r.get('batch', 1):>2} {r['s_per_step']:>7.4f} "
              f"{r.get('image_s', ''):>8} {r.get('warm_s', ''):>7} {r.get('x_floor', '') or '':>7}  {text}")


def _cuda_time(fn, iters: int = 20, warm: int = 3) -> float:
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters / 1e3


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> float:
    return round(torch.cuda.max_memory_allocated(device) / GiB, 2) if device.type == "cuda" else 0.0
