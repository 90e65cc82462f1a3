"""Where the weights come from: `[engine] model` resolved to a loaded FluxPipeline and a `model_id`.

Three sources, all local files only (nothing here touches the network):
- a diffusers FLUX.1-dev folder (model_index.json, transformer/, text_encoder*/, tokenizer*/, vae/);
- a single-file DiT (`*.safetensors`, original BFL key layout or diffusers layout), with the encoders,
  tokenizers, VAE and configs from `[engine] base_model` (a FLUX.1-dev folder);
- `tiny-random`: the tiny offline pipeline of engine/tiny.py, saved once under `[engine] models_dir`.

`model_id` is `<name>@<first 12 hex of a sha256>`: of the file for a single file, of the transformer
weights' sha256s for a folder. A file's sha256 is cached in a sidecar `<file>.sha256` keyed by size+mtime.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ModelNotFoundError
from engine.settings import TINY, EngineSettings

log = logging.getLogger(__name__)

HASH_LEN = 12
# What a base folder must provide besides the DiT weights.
BASE_PARTS = ("model_index.json", "transformer/config.json", "scheduler", "text_encoder", "text_encoder_2",
              "tokenizer", "tokenizer_2", "vae")
HOW_TO_GET = ("get it with `python -m bot download flux-dev` (or `majicflus`), or point [engine] model at an "
              "existing FLUX.1-dev folder or .safetensors file")
HOW_TO_GET_BASE = ("get it with `python -m bot download base` (the FLUX.1-dev encoders, tokenizers, VAE and "
                   "configs), or fix [engine] base_model")


@dataclass(frozen=True)
class ModelSource:
    """A resolved `[engine] model`: kind is 'folder', 'single-file' or 'tiny'."""
    kind: str
    path: Path             # the folder, or the single file
    base: Path | None      # the FLUX.1-dev folder that provides the rest, for single files
    name: str              # shown in model_id


# ------------------------------------------------------------------------------------------- resolving

def resolve_source(settings: EngineSettings) -> ModelSource:
    """Check `[engine] model` (and `base_model`) on disk; ModelNotFoundError says what is missing and why."""
    from engine.tiny import ensure_tiny

    # 1. The built-in tiny model: build it once into models_dir.
    if settings.model == TINY:
        path = ensure_tiny(settings.models_dir)
        return ModelSource("tiny", path, None, TINY)
    # 2. A path as written, else relative to models_dir.
    path = _find(settings.model, settings.models_dir)
    if path is None:
        raise ModelNotFoundError(f"[engine] model = {settings.model!r}: no such file or folder (also looked in "
                                 f"{settings.models_dir}/); {HOW_TO_GET}")
    # 3. A folder must be a complete diffusers FLUX pipeline.
    if path.is_dir():
        missing = _missing_parts(path)
        if not _dit_weights(path / "transformer"):
            missing.append("transformer/*.safetensors")
        if missing:
            raise ModelNotFoundError(f"{path} is not a complete diffusers FLUX.1-dev folder ({', '.join(missing)} "
                                     f"missing); {HOW_TO_GET}")
        return ModelSource("folder", path, None, path.name)
    # 4. A single file needs the base folder for everything but the DiT.
    if path.suffix != ".safetensors":
        raise ModelNotFoundError(f"{path} is not a .safetensors file; fluxbot loads FLUX DiT checkpoints in "
                                 f"safetensors format only ({HOW_TO_GET})")
    base = _find(settings.base_model, settings.models_dir)
    if base is None or not base.is_dir():
        raise ModelNotFoundError(f"[engine] base_model = {settings.base_model!r} is not a folder; {path.name} "
                                 f"needs it for the text encoders, tokenizers and VAE: {HOW_TO_GET_BASE}")
    missing = _missing_parts(base)
    if missing:
        raise ModelNotFoundError(f"{base} is not a complete FLUX.1-dev base folder ({', '.join(missing)} missing); "
                                 f"{HOW_TO_GET_BASE}")
    return ModelSource("single-file", path, base, path.stem)


def _find(value: str, models_dir: str) -> Path | None:
    for candidate in (Path(value).expanduser(), Path(models_dir) / value):
        if candidate.exists():
            return candidate
    return None


def _missing_parts(folder: Path) -> list[str]:
    return [part for part in BASE_PARTS if not (folder / part).exists()]


def _dit_weights(transformer_dir: Path) -> list[Path]:
    return sorted(transformer_dir.glob("*.safetensors"))


# --------------------------------------------------------------------------------------------- loading

def load_pipeline(source: ModelSource):
    """The FluxPipeline of `source`, every module in bf16 and in eval mode, on the CPU."""
    import torch
    from diffusers import FluxPipeline

    # 1. Everything from the folder (a single file's DiT replaces the base folder's transformer).
    folder = source.base if source.kind == "single-file" else source.path
    extra = {"transformer": None} if source.kind == "single-file" else {}
    try:
        pipe = FluxPipeline.from_pretrained(folder, dtype=torch.bfloat16, local_files_only=True, **extra)
    except (OSError, ValueError, KeyError) as e:
        raise ModelNotFoundError(f"could not load the FLUX pipeline from {folder}: {_short(e)}; the folder may be "
                                 f"incomplete or damaged: {HOW_TO_GET}") from e
    # 2. The single-file DiT.
    if source.kind == "single-file":
        pipe.register_modules(transformer=load_single_file_dit(source.path, source.base))
    # 3. Inference only.
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        getattr(pipe, name).eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_single_file_dit(path: Path, base: Path):
    """A FluxTransformer2DModel from one .safetensors file (BFL or diffusers keys), config from `base`."""
    import torch
    from diffusers import FluxTransformer2DModel
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from engine.tiny import bfl_to_diffusers

    # 1. Config and tensors.
    config = FluxTransformer2DModel.load_config(base / "transformer", local_files_only=True)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ModelNotFoundError(f"{path} is not a readable safetensors file ({_short(e)}); download it again "
                                 f"(`python -m bot download --verify` checks it)") from e
    # 2. Keep the DiT part of all-in-one checkpoints, then convert BFL keys.
    if any(k.startswith("model.diffusion_model.") for k in tensors):
        tensors = {k: v for k, v in tensors.items() if k.startswith("model.diffusion_model.")}
    try:
        if any(k.removeprefix("model.diffusion_model.").startswith("double_blocks.") for k in tensors):
            tensors = bfl_to_diffusers(tensors, config)
    except (KeyError, ValueError, RuntimeError) as e:
        raise ModelNotFoundError(f"{path} is not a FLUX.1 DiT checkpoint matching {base}/transformer/config.json "
                                 f"({_short(e)})") from e
    # 3. Build on the meta device and take the tensors as they are (cast to bf16).
    with torch.device("meta"):
        dit = FluxTransformer2DModel.from_config(config)
    state = {k: v.to(torch.bfloat16) for k, v in tensors.items()}
    try:
        dit.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelNotFoundError(f"{path} does not fit the FLUX.1 DiT of {base}: {_short(e)}") from e
    return dit.to(torch.bfloat16)


def _short(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ------------------------------------------------------------------------------------------ model ids

def model_id(source: ModelSource) -> str:
    """`<name>@<sha256[:12]>`: the file's hash, or the hash of the transformer weight files' hashes."""
    if source.kind == "single-file":
        digest = file_sha256(source.path)
    else:
        h = hashlib.sha256()
        for f in _dit_weights(source.path / "transformer"):
            h.update(f"{f.name}:{file_sha256(f)}\n".encode())
        digest = h.hexdigest()
    return f"{source.name}@{digest[:HASH_LEN]}"


def file_sha256(path: Path) -> str:
    """The file's sha256, cached in `<file>.sha256` (JSON with size and mtime; recomputed when they change)."""
    # 1. The sidecar, if it still describes the file.
    stat = path.stat()
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    sidecar = path.with_name(path.name + ".sha256")
    try:
        cached = json.loads(sidecar.read_text())
        if cached.get("size") == key["size"] and cached.get("mtime_ns") == key["mtime_ns"]:
            return str(cached["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    # 2. Hash the file (minutes for a 24 GB checkpoint, once).
    if stat.st_size > 1 << 30:
        log.info("hashing %s (%.1f GiB), once; the result is kept in %s", path, stat.st_size / 2**30, sidecar.name)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(16 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    # 3. Remember it, if the folder is writable.
    try:
        tmp = sidecar.with_name(sidecar.name + ".tmp")
        tmp.write_text(json.dumps({**key, "sha256": digest}))
        os.replace(tmp, sidecar)
    except OSError as e:
        log.warning("could not write %s (%s); the hash will be computed again next start", sidecar, e.strerror)
    return digest
