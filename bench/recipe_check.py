"""/show's recipe switch on a compiled GPU engine (issue 13's Pixels bullet): a job asking for another engine's
recipe comes out with that engine's pixels. FLUX.1-dev-shaped pipelines with the same seeded random weights, one
engine at a time on one device, whole 1024² images:
 1. engine A: `compute = "bf16"` (on a GPU with room it keeps the bf16 working copy: recipe "bf16.copy"): its own
    image, then the job with the upcast's recipe ("bf16"), then with the default fp8 kernel's, then its own again;
 2. engine B: bf16 without the copy (`bf16_copy = false`): its own image — A's "bf16" job must equal it;
 3. engine C: the defaults (fp8 `row-fast-tq` on sm_89+): its own image — A's fp8 job must equal it.
Each row: the recipe asked for and the one that ran, seconds, and the pixels against the partner's (equal? max
difference). On the CPU (`--tiny`) the same runs eager, without a copy (a plumbing check).

    python bench/recipe_check.py --out recipe-check.jsonl      # on the GPU
    python bench/recipe_check.py --tiny
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.engine_bench import FLUX_DEV, TINY, build_pipeline  # noqa: E402
from engine.fp8_compute import DEFAULT_KERNEL  # noqa: E402
from engine.pipeline import Engine  # noqa: E402
from engine.recipe import compute_name  # noqa: E402
from engine.settings import EngineSettings  # noqa: E402
from engine.spec import JobSpec  # noqa: E402


def engine(args, device: str, **settings) -> Engine:
    torch.manual_seed(0)
    pipe = build_pipeline(TINY if args.tiny else FLUX_DEV, torch.device(device))
    pipe.set_progress_bar_config(disable=True)
    base = EngineSettings(model="random-weights", profile="resident", devices=[device], vae_tiling="never")
    return Engine.from_pipeline(replace(base, **settings), device, pipe, "flux-dev-arch@random")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    device = "cuda:0" if torch.cuda.is_available() and not args.tiny else "cpu"
    res, steps = (256, 2) if args.tiny else (1024, 20)
    spec = JobSpec("a lighthouse on a cliff at dusk", seed=7, steps=steps, width=res, height=res)
    out = open(args.out, "a") if args.out else None
    images: dict[str, np.ndarray] = {}

    def emit(**row) -> None:
        line = json.dumps(row)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    def make(e: Engine, label: str, recipe: dict | None = None) -> None:
        t = time.perf_counter()
        result = e.generate(replace(spec, recipe=recipe) if recipe else spec)
        images[label] = np.asarray(result.images[0]).astype(np.int16)
        emit(image=label, asked=(recipe or {}).get("compute"), ran=result.recipe["compute"],
             compiled=result.recipe["compile"], seconds=round(time.perf_counter() - t, 2))

    def compare(a: str, b: str) -> None:
        diff = np.abs(images[a] - images[b])
        emit(compare=[a, b], same_pixels=bool(diff.max() == 0), max_diff=int(diff.max()),
             mean_diff=round(float(diff.mean()), 4))

    # 1. Engine A: bf16 compute (with the bf16 working copy where it fits).
    a = engine(args, device, compute="bf16")
    emit(engine="A", recipe=a.recipe.to_dict(), computes=list(a.recipe_computes), bf16_copy_gib=round(a.bf16_copy_bytes / 2**30, 2))
    make(a, "A-own")
    make(a, "A-as-bf16", {**a.recipe.to_dict(), "compute": "bf16"})
    fp8 = compute_name("fp8", DEFAULT_KERNEL if device != "cpu" else "row-fast")
    make(a, "A-as-fp8", {**a.recipe.to_dict(), "compute": fp8})
    make(a, "A-own-again")
    compare("A-own", "A-own-again")
    a.close()
    del a
    torch.cuda.empty_cache() if device != "cpu" else None
    # 2. Engine B: bf16 compute without the copy.
    b = engine(args, device, compute="bf16", bf16_copy=False)
    emit(engine="B", recipe=b.recipe.to_dict())
    make(b, "B-own")
    compare("A-as-bf16", "B-own")
    b.close()
    del b
    torch.cuda.empty_cache() if device != "cpu" else None
    # 3. Engine C: the defaults.
    c = engine(args, device)
    emit(engine="C", recipe=c.recipe.to_dict())
    make(c, "C-own")
    compare("A-as-fp8", "C-own")
    compare("A-own", "A-as-bf16")
    c.close()


if __name__ == "__main__":
    main()
