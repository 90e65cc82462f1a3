"""`python -m bot generate "a cat" --seed 7 --steps 20 --size 1024x1024 -o cat.png`: the bot's engine, from a terminal.

Checks every value with the bot's own limits (engine/limits.py, `[limits]` of the config) and that the output
can be written, all before loading; then loads the configured model once, makes the image(s) in phases
(prompt, a bar over the denoising steps, the decode), saves PNGs with the same metadata as the bot's, and
prints the seed(s), the timings of each phase and the path(s).
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bot.config import Config, load_config
from bot.input_images import store_file
from bot.lora_choice import lora_library
from engine import limits
from engine.errors import EngineError
from engine.models import quiet_loading_bars
from engine.png import image_params, save_png
from engine.settings import TINY
from engine.image_input import DEFAULT_DENOISE, fit_size
from engine.lora_files import DEMO_LORA, LoraLibrary
from engine.spec import JobSpec, LoraUse

log = logging.getLogger(__name__)

_SIZE = re.compile(r"^\s*(\d+)\s*[x×X]\s*(\d+)\s*$")
DEFAULT_SIZE = "1024x1024"  # without --size (with --image: the image's own size, engine/image_input.fit_size)
TINY_NOTE = (f"note: {TINY} has random weights, so its images are noise: it checks the set-up. For pictures, "
             f"download a model (python -m bot download flux-dev) and set [engine] model.")


class UsageError(ValueError):
    """A bad command-line value; the message says what is allowed."""


def parse_size(text: str) -> tuple[int, int]:
    """'1024x768' → (1024, 768); both multiples of 16 from 256 to 2048 (engine/limits.py)."""
    m = _SIZE.match(text)
    if not m:
        raise UsageError(f"--size {text!r}: write WIDTHxHEIGHT, e.g. 1024x1024")
    try:
        return limits.check_size(int(m.group(1)), int(m.group(2)))
    except limits.LimitError as e:
        raise UsageError(f"--size {text}: {e}") from None


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
    # 1. Config and overrides (argparse has already refused an unknown --profile).
    cfg = load_config(args.config)
    settings = cfg.engine
    if args.model:
        settings = replace(settings, model=args.model)
    if args.profile:
        settings = replace(settings, profile=args.profile)
    # 2. Check the request and the output paths before loading anything.
    try:
        spec = _spec_from_args(args, cfg, settings, JobSpec)
        paths = output_paths(args.output, settings.images_dir, spec.seeds)
        check_writable(paths)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # 3. Load, generate, save.
    try:
        return _run(settings, spec, paths)
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _spec_from_args(args: argparse.Namespace, cfg: Config, settings, job_spec_cls):
    """The JobSpec, every value checked with the bot's limits and wording (engine/limits.py); --lora files checked
    and hashed, an --image stored as an input (as the bot stores attachments)."""
    # 1. An image input: stored clean; its size is the job's unless --size is given.
    image = _input_image(args, settings.images_dir)
    if args.size is None and image is not None:
        width, height = fit_size(image.width, image.height)
    else:
        width, height = parse_size(args.size or DEFAULT_SIZE)
    if settings.model == TINY and any(t.rpartition(":")[0] == DEMO_LORA or t == DEMO_LORA for t in args.lora or ()):
        _ensure_demo_lora(settings)   # tiny-random's demo LoRA is written when the engine loads: here, first
    try:
        library = lora_library(settings)
        loras = tuple(_lora_use(library, text) for text in args.lora or ())
        library.check_reserve([library.at(u.path) if u.path else library.find(u.name) for u in loras if u.strength])
        limits.check_lora_count(len(loras), cfg.limits.max_loras)
        prompt = limits.check_prompt(args.prompt, cfg.limits.max_prompt_chars)
        seed = limits.check_seed(args.seed)
        steps = limits.check_steps(settings.default_steps if args.steps is None else args.steps)
        guidance = limits.check_guidance(settings.default_guidance if args.guidance is None else args.guidance)
        count = limits.check_count(args.count, cfg.limits.max_count)
        strength = limits.check_variation(args.variation_strength, args.variation_seed)
        limits.check_cost(count, steps, width, height, cfg.limits.max_job_cost)
    except limits.LimitError as e:
        raise UsageError(str(e)) from None
    spec = job_spec_cls(prompt=prompt, seed=seed, steps=steps, width=width, height=height, guidance=guidance,
                        variation_seed=args.variation_seed, variation_strength=strength, count=count, loras=loras)
    if image is not None:
        spec = replace(spec, image=str(image.path), image_sha256=image.sha256, denoise=args.strength)
    return spec.resolve()


def _input_image(args: argparse.Namespace, images_dir: str):
    """--image stored as an input (bot.input_images), or None; --strength without --image is a usage error."""
    if args.image is None:
        if args.strength is not None:
            raise UsageError("--strength needs --image (the image to start from)")
        return None
    try:
        args.strength = limits.check_denoise(DEFAULT_DENOISE if args.strength is None else args.strength)
        return store_file(Path(args.image), images_dir=images_dir)
    except FileNotFoundError:
        raise UsageError(f"--image {args.image}: no such file") from None
    except limits.LimitError as e:
        raise UsageError(f"--image {args.image}: {e}") from None


def _ensure_demo_lora(settings) -> None:
    from engine.tiny import build_tiny_pipeline, ensure_demo_lora  # lazy: torch and diffusers, only for the demo

    ensure_demo_lora(settings.loras_dir, build_tiny_pipeline().transformer)


def _lora_use(library: LoraLibrary, text: str) -> LoraUse:
    """`--lora NAME_OR_PATH[:STRENGTH]` → a LoraUse with the file's hashes (a name is looked up in [engine]
    loras_dir; a path is used as given)."""
    name, strength = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            strength = float(tail)
            name = head
        except ValueError:
            pass
    file = library.find_or_at(name)
    library.check(file)
    hashes = library.hashes(file)
    is_path = file.path.parent.resolve() != library.folder.resolve() or name.lower().endswith(".safetensors")
    return LoraUse(name=file.name, strength=limits.check_lora_strength(strength), sha256=hashes.sha256,
                   short_hash=hashes.short, path=str(file.path) if is_path else None)


def check_writable(paths: list[Path]) -> None:
    """UsageError unless each PNG path can be written: its folder exists (made if missing) and takes a file."""
    for folder in dict.fromkeys(p.parent for p in paths):
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"cannot write to {folder}/: it is a file, not a folder; pick another -o")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".fluxbot-write-test-"):
                pass
        except OSError as e:
            raise UsageError(f"cannot write to {folder}/ ({e.strerror or e}): pick another -o or fix the "
                             f"folder's permissions") from None
    for path in paths:
        if path.is_dir():
            raise UsageError(f"{path} is a folder: give -o a file name, e.g. {path / 'image.png'}")


class PhaseReport:
    """What the terminal shows while a job runs: the prompt phase, a bar over the denoising steps that
    starts at the first step and closes at the last (so its s/step is the denoising's own), then the decode."""

    def __init__(self, spec, stream=None):
        self.spec, self.stream, self.bar = spec, sys.stderr if stream is None else stream, None

    def start(self) -> None:
        print("encoding the prompt…", file=self.stream, flush=True)

    def progress(self, done: int, total: int) -> None:
        from tqdm import tqdm

        # 1. The first step opens the bar (the prompt encoding is not a step); `initial` keeps that step out of
        #    the rate, which tqdm measures from the bar's opening.
        if self.bar is None:
            self.bar = tqdm(total=total, initial=done, desc="denoising", unit="step", file=self.stream)
        self.bar.update(done - self.bar.n)
        # 2. The last step closes it: the decode is its own phase.
        if done >= total:
            self.close()
            n = self.spec.count
            print(f"decoding {n} image{'s' if n > 1 else ''}…", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _run(settings, spec, paths: list[Path]) -> int:
    from engine.pipeline import Engine  # lazy: imports torch and diffusers (seconds), after the arguments are checked

    # 1. Load the model (the first tiny-random run builds it); our own bar is the only one.
    quiet_loading_bars()
    device = pick_device(settings.devices)
    t0 = time.perf_counter()
    engine = Engine.load(settings, device)
    load_s = time.perf_counter() - t0
    print(f"model {engine.model_id} on {device}, profile {engine.profile}, {engine.precision} "
          f"(loaded in {load_s:.1f} s)")
    if settings.model == TINY:
        print(TINY_NOTE)
    report = PhaseReport(spec)
    try:
        # 2. Generate: prompt, denoising bar, decode.
        report.start()
        result = engine.generate(spec, progress=report.progress)
        # 3. Save each image with its recipe.
        for i, path in enumerate(paths):
            save_png(result.images[i], path, image_params(result, i))
    finally:
        report.close()
        engine.close()
    # 4. Report the real timings of each phase.
    t = result.timings
    print(f"seed{'s' if len(result.seeds) > 1 else ''}: {', '.join(map(str, result.seeds))}")
    print(f"timings: prompt {t['encode']:.2f} s, denoise {t['denoise']:.2f} s ({t['s_per_step']:.3f} s/step over "
          f"{spec.steps} steps), decode {t['decode']:.2f} s, total {t['total']:.2f} s")
    for path in paths:
        print(f"saved {path}")
    return 0
