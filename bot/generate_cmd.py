"""`python -m bot generate "a cat" --seed 7 --steps 20 --size 1024x1024 -o cat.png`: the bot's engine, from a terminal.

Loads the configured model once, makes the image(s) with a progress bar over the steps, saves PNGs with the
same metadata as the bot's, and prints the seed(s), the timings and the path(s).
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

from bot.config import load_config

log = logging.getLogger(__name__)

_SIZE = re.compile(r"^\s*(\d+)\s*[x×X]\s*(\d+)\s*$")
MIN_SIZE, MAX_SIZE, SIZE_STEP = 256, 2048, 16
MIN_STEPS, MAX_STEPS = 1, 50
MAX_COUNT = 16


class UsageError(ValueError):
    """A bad command-line value; the message says what is allowed."""


def parse_size(text: str) -> tuple[int, int]:
    """'1024x768' → (1024, 768); both multiples of 16 from 256 to 2048."""
    m = _SIZE.match(text)
    if not m:
        raise UsageError(f"--size {text!r}: write WIDTHxHEIGHT, e.g. 1024x1024")
    width, height = int(m.group(1)), int(m.group(2))
    for name, v in (("width", width), ("height", height)):
        if v % SIZE_STEP or not MIN_SIZE <= v <= MAX_SIZE:
            raise UsageError(f"--size {text}: {name} {v} must be a multiple of {SIZE_STEP} from {MIN_SIZE} to "
                             f"{MAX_SIZE}")
    return width, height


def output_paths(output: str | None, images_dir: str, seeds: list[int]) -> list[Path]:
    """Where each image goes: -o as given (with _1, _2 … for several), else images_dir/cli-<time>-<seed>.png."""
    if output:
        out = Path(output)
        if out.suffix.lower() != ".png":
            out = out.with_name(out.name + ".png")
        if len(seeds) == 1:
            return [out]
        return [out.with_name(f"{out.stem}_{i + 1}{out.suffix}") for i in range(len(seeds))]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return [Path(images_dir) / f"cli-{stamp}-{seed}.png" for seed in seeds]


def pick_device(devices: list[str]) -> str:
    """The first configured device; 'auto' is the first CUDA GPU, else the CPU."""
    first = devices[0] if devices else "auto"
    if first != "auto":
        return first
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def generate_command(args: argparse.Namespace) -> int:
    """Run one generation from the parsed `generate` arguments; 0 on success, 1 engine error, 2 usage."""
    from engine.errors import EngineError
    from engine.spec import JobSpec

    # 1. Config and overrides.
    cfg = load_config(args.config)
    settings = cfg.engine
    if args.model:
        settings = replace(settings, model=args.model)
    if args.profile:
        settings = replace(settings, profile=args.profile)
    # 2. Check the request before loading anything.
    try:
        spec = _spec_from_args(args, settings, JobSpec)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # 3. Load, generate, save.
    try:
        return _run(args, settings, spec)
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _spec_from_args(args: argparse.Namespace, settings, job_spec_cls):
    width, height = parse_size(args.size)
    steps = settings.default_steps if args.steps is None else args.steps
    if not MIN_STEPS <= steps <= MAX_STEPS:
        raise UsageError(f"--steps {steps}: use {MIN_STEPS} to {MAX_STEPS}")
    guidance = settings.default_guidance if args.guidance is None else args.guidance
    if not 0 < guidance <= 30:
        raise UsageError(f"--guidance {guidance}: use a number above 0 and at most 30 (FLUX.1-dev: about 3.5)")
    if not 1 <= args.count <= MAX_COUNT:
        raise UsageError(f"--count {args.count}: use 1 to {MAX_COUNT}")
    if not 0.0 <= args.variation_strength <= 1.0:
        raise UsageError(f"--variation-strength {args.variation_strength}: use 0 to 1")
    if args.variation_strength > 0 and args.variation_seed is None:
        raise UsageError("--variation-strength needs --variation-seed")
    if not args.prompt.strip():
        raise UsageError("the prompt is empty")
    seed = None if args.seed is None or args.seed < 0 else args.seed
    return job_spec_cls(prompt=args.prompt, seed=seed, steps=steps, width=width, height=height, guidance=guidance,
                        variation_seed=args.variation_seed, variation_strength=args.variation_strength,
                        count=args.count).resolve()


def _run(args: argparse.Namespace, settings, spec) -> int:
    from tqdm import tqdm

    from engine.models import quiet_loading_bars
    from engine.pipeline import Engine
    from engine.png import image_params, save_png

    # 1. Load the model (the first tiny-random run builds it); our own bar is the only one.
    quiet_loading_bars()
    device = pick_device(settings.devices)
    t0 = time.perf_counter()
    engine = Engine.load(settings, device)
    load_s = time.perf_counter() - t0
    print(f"model {engine.model_id} on {device}, profile {engine.profile}, {engine.precision} "
          f"(loaded in {load_s:.1f} s)")
    try:
        # 2. Generate with a bar over the steps.
        with tqdm(total=spec.steps, desc="denoising", unit="step", file=sys.stderr) as bar:
            def progress(done: int, total: int) -> None:
                bar.update(done - bar.n)

            result = engine.generate(spec, progress=progress)
        # 3. Save each image with its recipe.
        paths = output_paths(args.output, settings.images_dir, result.seeds)
        for i, path in enumerate(paths):
            save_png(result.images[i], path, image_params(result, i))
    finally:
        engine.close()
    # 4. Report.
    t = result.timings
    print(f"seed{'s' if len(result.seeds) > 1 else ''}: {', '.join(map(str, result.seeds))}")
    print(f"timings: encode {t['encode']:.2f} s, denoise {t['denoise']:.2f} s ({t['s_per_step']:.3f} s/step), "
          f"decode {t['decode']:.2f} s, total {t['total']:.2f} s")
    for path in paths:
        print(f"saved {path}")
    return 0
