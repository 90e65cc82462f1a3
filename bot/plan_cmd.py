"""`python -m bot plan [--vram GiB] [--ram GiB] [--size WxH]`: where every weight would live, and how fast.

For this machine (budgets measured as the engine measures them at start-up, or `[engine] vram_budget_gib` /
`ram_budget_gib`), or for a machine you describe: `--vram 8` is an 8 GiB card (the CUDA context, ~0.5 GiB,
comes off), `--ram 16` a 16 GiB machine (2.5 GiB come off for the OS, Python and torch). Works without a GPU
and before the weights are downloaded (FLUX.1-dev's known sizes stand in for absent files, and for the
`tiny-random` test model). Prints the planner's
placement, predicted s/step, s/image, peak VRAM and host RAM, and why; exit 1 when the plan cannot fit.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import replace

from bot.config import load_config
from engine import limits
from engine.errors import EngineError
from engine.settings import TINY

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vram", type=float, default=None, metavar="GiB", help="plan for a card of this size (default: "
                   "this machine's first GPU, or [engine] vram_budget_gib)")
    p.add_argument("--ram", type=float, default=None, metavar="GiB", help="plan for a machine with this much RAM "
                   "(default: what this machine has available, or [engine] ram_budget_gib)")
    p.add_argument("--size", default="1024x1024", help="WIDTHxHEIGHT of the images (default 1024x1024)")
    p.add_argument("--h2d", type=float, default=None, metavar="GB/s", help="pinned host->GPU speed (default: "
                   "measured on this machine's GPU, else 25, a PCIe 4.0 x16 board)")
    p.add_argument("--disk", type=float, default=None, metavar="GB/s", help="disk read speed (default 2, an NVMe "
                   "SSD)")


def plan_command(args: argparse.Namespace) -> int:
    """Print the plan; 0 if it fits, 1 if it cannot, 2 for bad arguments or config."""
    try:
        plan = make_cli_plan(args)
    except ValueError as e:
        print(f"plan: {e}")
        return 2
    print(plan.describe())
    return 0 if plan.fits else 1


def make_cli_plan(args: argparse.Namespace):
    """The Plan for the parsed arguments and the config (ValueError with a clear message for bad input)."""
    from engine.model_sizes import sizes_from_files  # lazy: bot.cli imports this module for every command's parser
    from engine.planner import flux_dev_sizes  # lazy: as above; the planner is loaded only when `plan` runs

    # 1. Arguments: positive budgets, an allowed size.
    for flag in ("vram", "ram", "h2d", "disk"):
        value = getattr(args, flag, None)
        if value is not None and not value > 0:
            raise ValueError(f"--{flag} {value:g}: must be a positive number")
    width, height = _size(args.size)
    try:
        limits.check_size(width, height)
    except limits.LimitError as e:
        raise ValueError(f"--size {args.size}: {e}") from None
    # 2. The model's sizes (from the files, or FLUX.1-dev's), the budgets, the plan.
    settings = load_config(args.config).engine
    if settings.model == TINY:   # the test model plans nothing useful: plan for what `download` fetches
        sizes = replace(flux_dev_sizes(settings.fp8), source=f"FLUX.1-dev reference sizes (fp8 {settings.fp8}; "
                        "[engine] model is tiny-random, so the plan is for the model `download` fetches)")
    else:
        sizes, _missing = sizes_from_files(settings)
    try:
        device, budgets = _budgets(args, settings)
    except EngineError as e:
        raise ValueError(str(e)) from None
    from engine.memory import make_plan  # lazy: imports torch (seconds)

    return make_plan(settings, device, sizes, budgets, size=(width, height))


def _size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise ValueError(f"--size {text!r}: write it as WIDTHxHEIGHT, e.g. 1024x1024")
    return int(w), int(h)


def _budgets(args, settings):
    """(device, memory.Budgets): the machine described by the flags, else this one (as the engine measures)."""
    import torch

    from engine.memory import Budgets, detect_budgets  # lazy: imports torch (seconds)
    from engine.planner import CUDA_CONTEXT, GiB, MACHINE_RAM_RESERVE, Bandwidths  # lazy: only when `plan` runs

    gpu = torch.cuda.is_available()
    # 1. This machine, measured (errors name a bad [engine] budget).
    measured = None
    if args.vram is None or args.ram is None:
        measured = detect_budgets(settings, "cuda:0" if gpu and args.vram is None else "cpu")
    # 2. VRAM: the card given, else this machine's.
    if args.vram is not None:
        vram, vram_note, device = int(args.vram * GiB) - CUDA_CONTEXT, f"a {args.vram:g} GiB card - " \
            f"{CUDA_CONTEXT / GiB:.1f} CUDA context", "cuda"
    elif gpu:
        vram, vram_note, device = measured.vram, measured.note.split("; ")[0], "cuda:0"
    else:
        vram, vram_note, device = 0, "no CUDA GPU here (give --vram GiB to plan for a card)", "cpu"
    # 3. RAM: the machine given, else this one.
    if args.ram is not None:
        ram, ram_note = int(args.ram * GiB) - MACHINE_RAM_RESERVE, (f"a {args.ram:g} GiB machine - "
                                                                   f"{MACHINE_RAM_RESERVE / GiB:.1f} OS/Python/torch")
    else:
        ram, ram_note = measured.ram, next(p for p in measured.note.split("; ") if p.startswith("RAM"))
    if ram <= 0 or (device != "cpu" and vram <= 0):
        raise ValueError(f"nothing left to plan with: {vram_note}; {ram_note}")
    # 4. Copy speeds: the flags, else measured (a GPU here and its own card), else the defaults.
    base = measured.bandwidth if measured is not None and args.vram is None and gpu else Bandwidths()
    h2d = args.h2d * 1e9 if args.h2d else base.h2d
    disk = args.disk * 1e9 if args.disk else base.disk
    source = base.source if not (args.h2d or args.disk) else f"--h2d/--disk given; others: {base.source}"
    return device, Budgets(vram=vram, ram=ram, note=f"VRAM: {vram_note}; RAM: {ram_note.removeprefix('RAM: ')}",
                           bandwidth=Bandwidths(h2d=h2d, page_cache=base.page_cache, disk=disk, source=source))
