"""The planner's `ModelSizes` of the configured model, from safetensors headers only (no tensor is read, no torch),
and the widths of its Linears from its configs (`model_widths`, what a LoRA is checked against before a job).

What `python -m bot plan` and `doctor` plan with before anything is loaded: each DiT block's bytes as fluxbot
will store them (Linear weights 1 byte under fp8, the rest bf16; a file already in fp8 stays 1 byte), T5's
blocks, CLIP and the VAE in bf16. Parts whose files are absent (weights not downloaded yet) take FLUX.1-dev's
reference sizes (engine/planner.py) and say so.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import struct
from collections.abc import Iterable
from pathlib import Path

from engine.lora_shapes import ModelWidths, widths_from_configs
from engine.models import _find          # the engine's look-up order: as written, else under models_dir
from engine.planner import ModelSizes, flux_dev_sizes
from engine.settings import TINY, EngineSettings

log = logging.getLogger(__name__)

_DOUBLE = re.compile(r"^(?:model\.diffusion_model\.)?(?:transformer_blocks|double_blocks)\.(\d+)\.")
_SINGLE = re.compile(r"^(?:model\.diffusion_model\.)?(?:single_transformer_blocks|single_blocks)\.(\d+)\.")
_T5_BLOCK = re.compile(r"^encoder\.block\.(\d+)\.")
_ONE_BYTE = ("F8_E4M3", "F8_E5M2")
# tiny-random before its first start builds it (engine/tiny.py: 1 double + 1 single block, 2-layer encoders).
TINY_SIZES = ModelSizes(double_blocks=(100_000,), single_blocks=(60_000,), dit_rest=60_000, t5_blocks=(30_000,) * 2,
                        t5_rest=30_000, clip=100_000, vae=200_000, source="tiny-random (not built yet: under 1 MB)")
_FOREIGN = ("vae.", "first_stage_model.", "text_encoders.", "conditioner.", "cond_stage_model.")


def sizes_from_files(settings: EngineSettings, *, fallback: bool = True) -> tuple[ModelSizes, list[str]]:
    """(sizes, the parts taken from the FLUX.1-dev reference because their files are absent). With
    `fallback=False` absent parts count 0 bytes instead."""
    dit_files, folder = _files(settings)
    reference = flux_dev_sizes(settings.fp8)
    if settings.model == TINY and not dit_files:     # built on first start; a few hundred kB
        return TINY_SIZES, []
    missing: list[str] = []
    # 1. The DiT: per block.
    dit = _dit_sizes(_tensors(dit_files), settings.fp8) if dit_files else None
    if dit is None:
        missing.append("DiT")
        dit = ((reference.double_blocks, reference.single_blocks, reference.dit_rest) if fallback else ((), (), 0))
    # 2. T5 per block; CLIP and the VAE whole, in bf16.
    t5 = _t5_sizes(_tensors(_in(folder, "text_encoder_2")))
    if t5 is None:
        missing.append("T5")
        t5 = (reference.t5_blocks, reference.t5_rest) if fallback else ((), 0)
    parts = {}
    for name, sub, ref in (("CLIP", "text_encoder", reference.clip), ("VAE", "vae", reference.vae)):
        files = _in(folder, sub)
        parts[name] = sum(2 * math.prod(shape) for _, _, shape in _tensors(files)) if files else None
        if not parts[name]:
            missing.append(name)
            parts[name] = ref if fallback else 0
    where = "the model files" + (f" (FLUX.1-dev reference sizes for the {', '.join(missing)}: not found)"
                                 if missing else "")
    widths = model_widths(settings)         # 3. What one rank of LoRA takes (the planner's LoRA reserve)
    return ModelSizes(double_blocks=dit[0], single_blocks=dit[1], dit_rest=dit[2], t5_blocks=t5[0], t5_rest=t5[1],
                      clip=parts["CLIP"], vae=parts["VAE"], source=where,
                      lora_rank_bytes=widths.rank_bytes if widths else reference.lora_rank_bytes), missing


def model_widths(settings: EngineSettings) -> ModelWidths | None:
    """The widths of `[engine] model` from the configs the engine loads it with; None when they are not on disk
    yet (weights not downloaded, tiny-random before its first start): then only the job's run checks widths."""
    folder = _files(settings)[1]
    if folder is None:
        return None
    texts = {}
    for part in ("transformer", "text_encoder"):
        try:
            texts[part] = (folder / part / "config.json").read_text()
        except OSError:
            texts[part] = None
    if texts["transformer"] is None:
        return None
    try:
        dit = json.loads(texts["transformer"])
        clip = json.loads(texts["text_encoder"]) if texts["text_encoder"] else None
        ident = hashlib.sha256(f"{texts['transformer']}\0{texts['text_encoder']}".encode()).hexdigest()[:16]
        return widths_from_configs(dit, clip, ident)
    except (ValueError, KeyError, TypeError) as e:
        log.warning("cannot read the model's widths from %s (%s): LoRA widths are checked when a job runs", folder, e)
        return None


def _files(settings: EngineSettings) -> tuple[list[Path], Path | None]:
    """(the DiT's weight files, the folder that holds the encoders and the VAE)."""
    if settings.model == TINY:
        root = Path(settings.models_dir) / TINY
        return sorted((root / "transformer").glob("*.safetensors")), root
    model = _find(settings.model, settings.models_dir)
    if model is not None and model.is_file():
        return [model], _find(settings.base_model, settings.models_dir)
    if model is None:
        return [], _find(settings.base_model, settings.models_dir)
    return sorted((model / "transformer").glob("*.safetensors")), model


def _in(folder: Path | None, sub: str) -> list[Path]:
    return sorted((folder / sub).glob("*.safetensors")) if folder is not None else []


def _dit_sizes(tensors: Iterable[tuple[str, str, list[int]]], fp8: str):
    doubles: dict[int, int] = {}
    singles: dict[int, int] = {}
    rest = 0
    for name, dtype, shape in tensors:
        if name.startswith(_FOREIGN):          # all-in-one checkpoints carry the VAE and encoders too
            continue
        numel = math.prod(shape)
        one_byte = dtype in _ONE_BYTE or (fp8 != "off" and name.endswith(".weight") and len(shape) == 2 and not (
            fp8 == "diffusers-default" and ("norm" in name or "pos_embed" in name)))
        nbytes = numel * (1 if one_byte else 2)
        if m := _DOUBLE.match(name):
            doubles[int(m[1])] = doubles.get(int(m[1]), 0) + nbytes
        elif m := _SINGLE.match(name):
            singles[int(m[1])] = singles.get(int(m[1]), 0) + nbytes
        else:
            rest += nbytes
    if not doubles and not singles:
        return None
    return tuple(doubles[i] for i in sorted(doubles)), tuple(singles[i] for i in sorted(singles)), rest


def _t5_sizes(tensors: Iterable[tuple[str, str, list[int]]]):
    blocks: dict[int, int] = {}
    rest = 0
    for name, _dtype, shape in tensors:
        nbytes = 2 * math.prod(shape)
        if m := _T5_BLOCK.match(name):
            blocks[int(m[1])] = blocks.get(int(m[1]), 0) + nbytes
        elif not name.startswith("encoder.embed_tokens"):   # tied to `shared`: counted once
            rest += nbytes
    if not blocks:
        return None
    return tuple(blocks[i] for i in sorted(blocks)), rest


def _tensors(files: list[Path]):
    """(name, dtype, shape) of every tensor in safetensors files, from the JSON header only."""
    for path in files:
        try:
            with open(path, "rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(length))
        except (OSError, ValueError, struct.error) as e:
            log.warning("cannot read the safetensors header of %s: %s", path, e)
            continue
        for name, meta in header.items():
            if name != "__metadata__":
                yield name, meta.get("dtype", ""), meta.get("shape", [])
