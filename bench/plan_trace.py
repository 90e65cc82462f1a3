"""Where a budgeted plan's step goes (issue 13): the default fp8 recipe, compiled, on the `streamed` profile under a
VRAM budget, with engine/streamer.py's copy/compute marks over the timed steps: busy milliseconds of the copy engine
and of the streamed blocks' compute, and for each streamed group how long its compute waited for its copy.

    python bench/plan_trace.py --budgets 10,8 --out trace.jsonl     # on the GPU
    python bench/plan_trace.py --tiny --budgets 0                  # CPU smoke (no marks on the CPU)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import engine_bench as eb  # noqa: E402
import fast_bench  # noqa: E402
from engine import memory  # noqa: E402
from engine.fp8_compute import DEFAULT_KERNEL, kernel_for  # noqa: E402
from engine.settings import EngineSettings  # noqa: E402


def waits(timeline: list) -> list[dict]:
    """Per streamed group of one pass: when its copy ended and its compute started (ms from the pass's first
    compute mark); a compute that starts within 0.05 ms of its copy's end waited for it."""
    copies = {pos: (a, b) for kind, pos, a, b in timeline if kind == "copy"}
    out = []
    for kind, pos, a, b in timeline:
        if kind == "compute" and pos in copies:
            out.append(dict(pos=pos, copy=copies[pos], compute=(a, b), waited=abs(a - copies[pos][1]) < 0.05))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="10")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    bargs = argparse.Namespace(tiny=args.tiny, res=256 if args.tiny else 1024, steps=20, dit_steps=args.steps,
                               only="", deadline_s=0, timeout=120, budget_gib=10.0)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    kernel = kernel_for(device)
    bench, _built = fast_bench._child_bench(bargs, eb, "fp8", kernel, compiled=True)
    out = open(args.out, "a") if args.out else None
    for budget in [float(b) for b in args.budgets.split(",")]:
        bench.plan.release()
        memory.free_device_cache()
        bench.plan = memory.apply_profile(bench.pipe, "streamed", str(bench.device),
                                          EngineSettings(profile="streamed", vram_budget_gib=budget))
        s, _warm = bench.dit_steps()
        unit = bench.plan.streamers[0]
        row = dict(budget_gib=budget, kernel=kernel, s_per_step=round(s, 4), resident_blocks=len(unit.resident),
                   groups=len(unit.order), slots=unit.slots, tiers="".join(t[0] for t in unit.tiers))
        if bench.device.type == "cuda":
            unit.start_trace()
            embeds, pooled = bench.inputs(1)
            _, step_s = eb.denoise(bench.pipe, bench.device, embeds=embeds, pooled=pooled, steps=args.steps,
                                   res=bench.res, batch=1)
            summary = unit.trace_summary()
            unit.trace = None
            timeline = summary.pop("timeline")
            per = waits(timeline)
            row.update({k: round(v / args.steps, 2) if k.endswith("_ms") else v for k, v in summary.items()},
                       traced_s_per_step=round(statistics.median(step_s[1:]), 4),
                       groups_waited=sum(w["waited"] for w in per), pass_=per)
        line = json.dumps(row)
        print(line[:600], flush=True)
        if out:
            out.write(line + "\n")
            out.flush()


if __name__ == "__main__":
    main()
