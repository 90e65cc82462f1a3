"""Where a compiled denoising step's time goes, and what CUDA graphs take off it (issue 13), one recipe per process.

`--dit RECIPE` (fp8 kernel name like `fp8:row-fast`, `bf16`, `bf16-copy` (bf16 compute from the engine's bf16 working
copy of the fp8 Linears, engine/bf16_copy.py: first 20 steps without the copy, then with it, same latents?), or
`weights-bf16` for diffusers' compiled bf16 weights) builds the FLUX.1-dev-shaped DiT with the seeded random weights of bench/fast_bench.py, resident, compiled
per block, then measures, each row printed as a JSON line:
 1. `steps`: s/step through diffusers' loop at batch 1 (a sync per step, as bench/fast_bench.py times it);
 2. `forward`: one DiT forward on the inputs the loop passed it, synced each call and back to back, and the sum of
    its CUDA kernels (torch.profiler) by kind: what is left of the wall time is the GPU waiting for the CPU;
 3. `graphs`: the same loop with engine/cuda_graphs.py's GraphedForward in place (the engine's
    `[engine] cuda_graphs`), and whether 20 steps from fixed inputs give the same latents bit for bit;
 4. the same at batch 4 (`steps`, `graphs`, and the kernel sums: what a batch-4 step costs by kind against 4 x
    batch 1's).
`--engine` runs whole images through the bot's Engine (bench/multigpu_bench.load_engine: the default compute, fp8
on an H200, or `--engine-compute bf16`, which keeps the bf16 working copy where it fits; compiled, resident) with new prompts, graphs on, then off: seconds per image and per phase; then the VAE decode alone,
as the engine runs it and in channels-last memory format.

    python bench/step_probe.py --dit fp8:row-fast --out probe-fp8.jsonl     # on the GPU
    python bench/step_probe.py --engine --out probe-engine.jsonl
    python bench/step_probe.py --dit bf16 --tiny                            # CPU smoke (no graphs, no profile)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import engine_bench as eb  # noqa: E402
import fast_bench  # noqa: E402
from engine.cuda_graphs import GraphedForward  # noqa: E402

GiB = 1024 ** 3


class Probe:
    def __init__(self, args):
        self.args = args
        self.out = open(args.out, "a") if args.out else None

    def emit(self, **row) -> dict:
        row["t_s"] = round(time.perf_counter() - T0, 1)
        line = json.dumps(row)
        print(line, flush=True)
        if self.out:
            self.out.write(line + "\n")
            self.out.flush()
        return row


T0 = time.perf_counter()


def _bench_args(args) -> argparse.Namespace:
    ns = eb.build_parser().parse_args([] + (["--tiny"] if args.tiny else []))
    ns.res = args.res or (64 if args.tiny else 1024)
    ns.steps = 2 if args.tiny else 20
    ns.dit_steps = 3 if args.tiny else args.dit_steps
    return ns


def _recorded_kwargs(bench, batch: int) -> dict:
    """The keyword arguments diffusers' loop passes the DiT (one 1-step denoise, recorded)."""
    dit = bench.pipe.transformer
    seen = {}
    original = dit.forward

    def spy(**kwargs):
        seen.update(kwargs)
        return original(**kwargs)

    dit.forward = spy
    try:
        embeds, pooled = bench.inputs(batch)
        eb.denoise(bench.pipe, bench.device, embeds=embeds, pooled=pooled, steps=1, res=bench.res, batch=batch)
    finally:
        del dit.forward
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in seen.items()}


def _forward_times(bench, kwargs: dict, n: int = 8) -> dict:
    """One forward synced per call (median) and n back to back (mean), seconds."""
    dit, dev = bench.pipe.transformer, bench.device
    synced = []
    with torch.no_grad():
        for _ in range(n):
            bench.sync()
            t = time.perf_counter()
            dit(**kwargs)
            bench.sync()
            synced.append(time.perf_counter() - t)
        bench.sync()
        t = time.perf_counter()
        for _ in range(n):
            dit(**kwargs)
        bench.sync()
        chained = (time.perf_counter() - t) / n
    return dict(synced_s=round(statistics.median(synced), 4), chained_s=round(chained, 4))


def _kernel_ms(bench, kwargs: dict, n: int = 2) -> dict:
    """CUDA kernel time of one forward by kind (ms), summed over n forwards / n."""
    if bench.device.type != "cuda":
        return {}
    from torch.profiler import ProfilerActivity, profile

    dit = bench.pipe.transformer
    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            dit(**kwargs)
        bench.sync()
    kinds: dict[str, float] = {}
    top = []
    for evt in prof.key_averages():
        us = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0)
        if not us:
            continue
        kind = fast_bench._kernel_kind(evt.key)
        kinds[kind] = kinds.get(kind, 0.0) + us / 1e3 / n
        top.append((round(us / 1e3 / n, 2), evt.count // n, kind, evt.key[:80]))
    top.sort(reverse=True)
    return dict(kernel_ms={k: round(v, 2) for k, v in sorted(kinds.items())},
                kernel_total_ms=round(sum(kinds.values()), 2), top=top[:12])


def _fixed_latents(bench) -> torch.Tensor:
    embeds, pooled = bench.inputs(1)
    lat, _ = eb.denoise(bench.pipe, bench.device, embeds=embeds, pooled=pooled, steps=bench.steps, res=bench.res,
                        batch=1)
    return lat.float().cpu()


def set_inductor(spec: str) -> dict:
    """`key=value,...` (e.g. coordinate_descent_tuning=1,triton.multi_kernel=1) set on torch._inductor.config."""
    import torch._inductor.config as cfg

    done = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        *path, leaf = key.strip().split(".")
        target = cfg
        for part in path:
            target = getattr(target, part)
        old = getattr(target, leaf)
        setattr(target, leaf, type(old)(int(value)) if isinstance(old, (bool, int)) else type(old)(value))
        done[key] = getattr(target, leaf)
    return done


def quant_check(probe: Probe) -> None:
    """engine/fp8_quant.py's Triton kernel against the torch code on the GPU, at FLUX's activation widths: the
    same scales and e4m3 values bit for bit, and each one's time."""
    from engine import fp8_quant
    from engine.fp8_compute import quantize_rows

    gen = torch.Generator("cuda").manual_seed(1)
    for m, k in ((4608, 3072), (4608, 15360), (4096, 12288), (512, 3072), (4, 15360)):
        x = (torch.randn(m, k, device="cuda", generator=gen) * torch.rand(m, 1, device="cuda", generator=gen) * 8)
        x = x.to(torch.bfloat16)
        x[0] = 0
        q, s = fp8_quant.quantize_rows_kernel(x)
        q_ref, s_ref = quantize_rows(x)
        times = {}
        for label, fn in (("kernel", fp8_quant.quantize_rows_kernel), ("torch", quantize_rows)):
            times[label] = round(fast_bench._cuda_time(lambda: fn(x), iters=20) * 1e3, 4)
        probe.emit(part="quant-check", m=m, k=k, same_scales=bool(torch.equal(s, s_ref)),
                   same_values=bool(torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))),
                   differing=int((q.view(torch.uint8) != q_ref.view(torch.uint8)).sum()), ms=times)


def build(args, compute: str, kernel: str):
    """(Bench, seconds to build): fluxbot's recipes and diffusers' compiled bf16 weights as bench/fast_bench.py
    builds them; `torchao`: the bf16 weights quantised by torchao's Float8DynamicActivationFloat8WeightConfig
    (PerRow, its defaults, which set inductor's coordinate-descent tuning) and compiled as diffusers does."""
    if compute != "torchao":
        return fast_bench._child_bench(_bench_args(args), eb, compute, kernel or "row-fast", compiled=True)
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    bench, built = fast_bench._child_bench(_bench_args(args), eb, "weights-bf16", None, compiled=False)
    quantize_(bench.pipe.transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    bench.compile_like_diffusers()
    return bench, built


def loop_s_per_step(bench, batch: int, steps: int = 10) -> float:
    """Seconds per step of a `steps`-step denoise timed as a whole (one sync at the end, none per step: how the
    engine runs a job)."""
    embeds, pooled = bench.inputs(batch)
    pipe = bench.pipe
    bench.sync()
    t = time.perf_counter()
    pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=bench.res, width=bench.res,
         num_inference_steps=steps, guidance_scale=3.5, generator=torch.Generator("cpu").manual_seed(0),
         output_type="latent")
    bench.sync()
    return (time.perf_counter() - t) / steps


def copy_check(bench, probe: Probe, *, skip_drift: bool) -> None:
    """`bf16-copy`: 20 steps from the fixed inputs with the per-step upcast (compiled), then the engine's bf16 working
    copy of the fp8 Linears, then the same 20 steps again: the copy's size and whether the latents are the same."""
    from engine.bf16_copy import add_copy, copyable_linears

    upcast = None if skip_drift else _fixed_latents(bench)
    t = time.perf_counter()
    nbytes = add_copy(copyable_linears(bench.pipe.transformer))
    bench.sync()
    row = dict(part="bf16-copy", copy_gib=round(nbytes / GiB, 2), copy_s=round(time.perf_counter() - t, 2))
    if upcast is not None:
        copied = _fixed_latents(bench)
        row.update(same_latents_as_upcast=bool(torch.equal(copied, upcast)),
                   max_abs_diff=float((copied - upcast).abs().max()),
                   rel_l2=round(float((copied - upcast).norm() / upcast.norm()), 5))
    probe.emit(**row)


def probe_dit(args, probe: Probe) -> None:
    compute, _, kernel = args.dit.partition(":")
    from engine.fp8_compute import FP8_KERNELS
    if compute not in ("fp8", "bf16", "bf16-copy", "weights-bf16", "torchao") or (compute == "fp8" and kernel
                                                                     and kernel not in FP8_KERNELS):
        raise SystemExit(f"--dit {args.dit!r}: use fp8:KERNEL (KERNEL one of {', '.join(FP8_KERNELS)}), bf16, "
                         f"bf16-copy, weights-bf16 or torchao")
    inductor = set_inductor(args.inductor)
    if "tq" in kernel and torch.cuda.is_available():
        quant_check(probe)
    bench, built = build(args, "bf16" if compute == "bf16-copy" else compute, kernel)
    probe.emit(part="built", recipe=args.dit, build_s=round(built, 1), device=str(bench.device), inductor=inductor)
    if compute == "bf16-copy":
        copy_check(bench, probe, skip_drift=args.skip_drift)
    graphs = None
    reference = None
    for batch in [int(b) for b in args.batches.split(",")] if not args.tiny else (1,):
        # 1. Steps through diffusers' loop (the first call compiles this shape).
        s, warm = bench.dit_steps(batch)
        probe.emit(part="steps", recipe=args.dit, batch=batch, s_per_step=round(s, 4), warm_s=round(warm, 1),
                   loop_s_per_step=round(loop_s_per_step(bench, batch), 4), graphs=False)
        # 2. One forward: wall time against its kernels.
        kwargs = _recorded_kwargs(bench, batch)
        times = _forward_times(bench, kwargs)
        kernels = _kernel_ms(bench, kwargs)
        gap = (times["synced_s"] * 1e3 - kernels["kernel_total_ms"]) if kernels else None
        probe.emit(part="forward", recipe=args.dit, batch=batch, **times, **kernels,
                   gpu_idle_ms=round(gap, 2) if gap is not None else None)
        if batch == 1 and not args.skip_drift:
            reference = _fixed_latents(bench)
        # 3. CUDA graphs (the engine's GraphedForward), then the same 20 steps again.
        if bench.device.type != "cuda" or compute in ("torchao", "weights-bf16") or args.no_graphs:
            continue
        graphs = graphs or GraphedForward(bench.pipe.transformer, capture_after=1).install()
        s_g, warm_g = bench.dit_steps(batch)
        row = dict(part="graphs", recipe=args.dit, batch=batch, s_per_step=round(s_g, 4), warm_s=round(warm_g, 2),
                   loop_s_per_step=round(loop_s_per_step(bench, batch), 4),
                   x_eager=round(s_g / s, 4), recorded=graphs.stats.recorded, replays=graphs.stats.replays,
                   failed=graphs.stats.failed,
                   graph_gib=[round(r.working_bytes / GiB, 2) for r in graphs.graphs.values()])
        if batch == 1 and reference is not None:
            again = _fixed_latents(bench)
            row.update(same_latents=bool(torch.equal(again, reference)),
                       max_abs_diff=float((again - reference).abs().max()))
            times_g = _forward_times(bench, kwargs)
            row.update(forward_synced_s=times_g["synced_s"], forward_chained_s=times_g["chained_s"])
        probe.emit(**row)
        graphs.remove()
        graphs = None
        torch.cuda.empty_cache()


def _engine(args, device: str):
    """The Engine `--engine` times: multigpu_bench's (the default compute), or the same with `--engine-compute`."""
    import multigpu_bench as mb
    from engine.pipeline import Engine
    from engine.settings import EngineSettings

    if args.engine_compute == "auto":
        return mb.load_engine(device, tiny=args.tiny)
    pipe = eb.build_pipeline(eb.TINY if args.tiny else eb.FLUX_DEV, torch.device(device))
    pipe.set_progress_bar_config(disable=True)
    settings = EngineSettings(model="random-weights", profile="resident", devices=[device], vae_tiling="never",
                              compute=args.engine_compute)
    return Engine.from_pipeline(settings, device, pipe, "flux-dev-arch@random")


def probe_engine(args, probe: Probe) -> None:
    from engine.spec import JobSpec

    device = "cuda:0" if torch.cuda.is_available() and not args.tiny else "cpu"
    res = args.res or (256 if args.tiny else 1024)
    engine = _engine(args, device)
    probe.emit(part="engine-built", compute=engine.recipe.compute, compiled=engine.recipe.compile,
               bf16_copy_gib=round(engine.bf16_copy_bytes / GiB, 2))
    steps = 2 if args.tiny else 20
    for graphs_on in (True, False):
        if not graphs_on:
            engine._drop_graphs()
        engine.generate(JobSpec(prompt=f"warm up {graphs_on}", seed=0, steps=steps, width=res, height=res))
        engine.generate(JobSpec(prompt=f"warm up again {graphs_on}", seed=0, steps=steps, width=res, height=res))
        for i in range(args.images):
            t = time.perf_counter()
            result = engine.generate(JobSpec(prompt=f"a new prompt number {i} {graphs_on}", seed=i, steps=steps,
                                             width=res, height=res))
            wall = time.perf_counter() - t
            probe.emit(part="engine-image", graphs=graphs_on and engine.graphs is not None, image_s=round(wall, 3),
                       **{k: round(v, 4) for k, v in result.timings.items()},
                       graph_stats=vars(engine.graphs.stats) if engine.graphs else None)
    # The decode alone: as the engine runs it, then with the VAE in channels-last memory format.
    packed = torch.randn(1, (res // 16) ** 2, 64, device=device, dtype=torch.bfloat16)
    for label in ("as-is", "channels-last"):
        if label == "channels-last":
            engine.pipe.vae.to(memory_format=torch.channels_last)
        engine._decode(packed, res, res)
        times = []
        for _ in range(5):
            engine._sync(torch.device(device))
            t = time.perf_counter()
            engine._decode(packed, res, res)
            engine._sync(torch.device(device))
            times.append(time.perf_counter() - t)
        probe.emit(part="decode", variant=label, decode_s=round(statistics.median(times), 4))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dit", help="fp8:KERNEL, bf16, bf16-copy, weights-bf16 or torchao: the DiT probe for this recipe")
    ap.add_argument("--engine", action="store_true", help="whole images through the Engine, graphs on and off")
    ap.add_argument("--engine-compute", default="auto", choices=("auto", "bf16", "fp8"),
                    help="--engine: [engine] compute of the Engine (bf16 keeps the bf16 working copy where it fits)")
    ap.add_argument("--images", type=int, default=5, help="--engine: timed images per setting")
    ap.add_argument("--res", type=int, default=None)
    ap.add_argument("--dit-steps", type=int, default=8)
    ap.add_argument("--inductor", default="", help="--dit: inductor settings key=value,... (e.g. "
                    "coordinate_descent_tuning=1)")
    ap.add_argument("--batches", default="1,4", help="--dit: batch sizes")
    ap.add_argument("--no-graphs", action="store_true", help="--dit: skip the CUDA-graph rows")
    ap.add_argument("--skip-drift", action="store_true", help="--dit: no 20-step latents")
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU (plumbing only)")
    ap.add_argument("--out", help="append every row (JSON lines) here")
    args = ap.parse_args(argv)
    probe = Probe(args)
    if args.dit:
        probe_dit(args, probe)
    if args.engine:
        probe_engine(args, probe)


if __name__ == "__main__":
    main()
