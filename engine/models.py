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
import time
from dataclasses import dataclass
from pathlib import Path

from engine.download import check_model_files
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
    from engine.tiny import ensure_tiny  # lazy: imports torch and diffusers (seconds)

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


def check_downloaded_files(source: ModelSource) -> None:
    """Start-up check of files fetched by `python -m bot download`: each present with the size its manifest
    recorded (milliseconds; `download --verify` and `doctor` re-hash). Folders without a manifest pass."""
    if source.kind == "tiny":
        return
    for report in check_model_files((source.path, source.base), full=False):
        if report.manifest_found and not report.ok:
            raise ModelNotFoundError(f"{report.summary()}; run `python -m bot download … --verify` to see which "
                                     f"files, then download them again")


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

def load_pipeline(source: ModelSource, fp8: str = "off"):
    """The FluxPipeline of `source` on the CPU, in eval mode, without ever holding the big models in RAM.

    The DiT comes from its fp8 cache file (built once, tensor by tensor: `load_dit`) and T5-XXL straight
    from its safetensors shards, both as memory-mapped CPU tensors (page cache, not anonymous RAM;
    engine/mmap_weights.py); CLIP and the VAE (0.4 GiB) are read normally. engine/precision.py then adds
    the compute hooks. The log says how long each part took.
    """
    import torch
    from diffusers import FluxPipeline

    t0 = time.perf_counter()
    # 1. T5-XXL mapped from its shards; CLIP, tokenizers, VAE and scheduler from the folder (the base folder
    #    for single files).
    folder = source.base if source.kind == "single-file" else source.path
    text_encoder_2 = load_t5(folder / "text_encoder_2")
    try:
        pipe = FluxPipeline.from_pretrained(folder, transformer=None, text_encoder_2=text_encoder_2,
                                            dtype=torch.bfloat16, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ModelNotFoundError(f"could not load the FLUX pipeline from {folder}: {_short(e)}; the folder may be "
                                 f"incomplete or damaged: {HOW_TO_GET}") from e
    t1 = time.perf_counter()
    # 2. The DiT, from the single file or the folder's transformer/ shards (through the fp8 cache).
    files = [source.path] if source.kind == "single-file" else _dit_weights(source.path / "transformer")
    pipe.register_modules(transformer=load_dit(files, folder / "transformer", fp8))
    # 3. Inference only.
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        getattr(pipe, name).eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    log.info("weights loaded from disk in %.1f s (encoders and VAE %.1f s, DiT %.1f s)", time.perf_counter() - t0,
             t1 - t0, time.perf_counter() - t1)
    return pipe


def load_dit(files: list[Path], config_dir: Path, fp8: str = "off"):
    """A FluxTransformer2DModel from safetensors files in diffusers or BFL key layout, config from `config_dir`.

    Its parameters are views of a memory-mapped file: of the source itself when it already is what the
    engine runs (diffusers layout, every tensor in its storage dtype), else of the fp8 cache file
    (engine/dit_cache.py) that the first start writes, tensor by tensor, beside the source. Where no cache
    can be written (read-only folder) the converted tensors are kept in RAM instead, as before the cache.
    """
    import torch
    from diffusers import FluxTransformer2DModel

    from engine import dit_cache  # lazy: these import torch; `doctor`, `plan` use this module without it
    from engine.mmap_weights import MappedFile  # lazy: imports torch
    from engine.precision import fp8_module_names  # lazy: imports torch

    t0 = time.perf_counter()
    # 1. An empty model and what each of its tensors must be.
    config = FluxTransformer2DModel.load_config(config_dir, local_files_only=True)
    with torch.device("meta"):
        dit = FluxTransformer2DModel.from_config(config)
    planned = dit_cache.planned_tensors(dit, fp8_module_names(dit, fp8))
    # 2. Map the source as it is, or the cache (built first if missing or stale); or convert into RAM.
    how = "mapped from the source"
    if dit_cache.source_is_ready(files, planned):
        mapped = [MappedFile(f) for f in files]
    else:
        cache = dit_cache.cache_path(files, config_dir, fp8)
        try:
            built = dit_cache.ensure(cache, files, config_dir, fp8, planned,
                                     lambda: dit_cache.converted_tensors(files, config, planned))
        except OSError as e:
            log.warning("cannot write the fp8 cache %s (%s): the converted DiT is kept in RAM instead (~%.1f GiB); "
                        "make that folder writable so later starts are fast and use page cache instead of RAM",
                        cache, e.strerror, sum(t.nbytes for t in planned.values()) / 2**30)
            for name, tensor in dit_cache.converted_tensors(files, config, planned):
                _place_tensor(dit, name, tensor, files[0])
            mapped, how = [], "converted into RAM (no cache)"
        else:
            mapped = [MappedFile(cache)]
            how = f"converted once into {cache}" if built else f"mapped from the cache {cache.name}"
    for mf in mapped:
        for name in mf.keys():
            _place_tensor(dit, name, mf.tensor(name), mf.path)
    # 3. Nothing may be left empty.
    empty = [n for n, p in dit.named_parameters() if p.is_meta]
    if empty:
        raise ModelNotFoundError(f"{files[0]} lacks {len(empty)} DiT tensors (first: {empty[0]}): the download is "
                                 f"incomplete or it is not a FLUX.1 DiT; download it again")
    log.info("DiT ready in %.1f s: %s", time.perf_counter() - t0, how)
    return dit


def load_t5(folder: Path):
    """T5-XXL (text_encoder_2) with its parameters mapped from the folder's safetensors shards (no copy)."""
    import torch
    from transformers import T5Config, T5EncoderModel

    from engine.mmap_weights import MappedFile, SafetensorsFormatError  # lazy: imports torch

    # 1. An empty model from the folder's config.
    try:
        config = T5Config.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"{folder}: no readable T5 config ({_short(e)}); {HOW_TO_GET}") from e
    with torch.device("meta"):
        t5 = T5EncoderModel(config)
    # 2. Each shard's tensors as views of its mapping.
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(f"{folder} holds no *.safetensors weights; {HOW_TO_GET}")
    for file in files:
        try:
            mf = MappedFile(file)
        except (SafetensorsFormatError, OSError) as e:
            raise ModelNotFoundError(f"{file} is not a readable safetensors file ({_short(e)}); download it "
                                     f"again (`python -m bot download --verify` checks it)") from e
        for name in mf.keys():
            _place_tensor(t5, name, mf.tensor(name), file)
    # 3. Tied tensors (the token embedding) point at the one that was read.
    tied = getattr(t5, "_tied_weights_keys", None) or {}
    for target, origin in (tied.items() if isinstance(tied, dict) else ()):
        module_name, _, attr = target.rpartition(".")
        if t5.get_submodule(module_name)._parameters[attr].is_meta:
            t5.get_submodule(module_name)._parameters[attr] = t5.get_parameter(origin)
    empty = [n for n, p in t5.named_parameters() if p.is_meta]
    if empty:
        raise ModelNotFoundError(f"{folder} lacks {len(empty)} T5 tensors (first: {empty[0]}): the download is "
                                 f"incomplete; {HOW_TO_GET}")
    return t5.eval()


def _place_tensor(model, name: str, tensor, file: Path) -> None:
    """Put `tensor` in place of the meta parameter `name`, checking that it exists and fits."""
    import torch

    module_name, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(module_name)
        current = module._parameters[attr]
    except (AttributeError, KeyError):
        raise ModelNotFoundError(f"{file} holds {name}, which a {type(model).__name__} does not have: it is "
                                 f"another kind of model, or a variant this config does not describe") from None
    if tuple(current.shape) != tuple(tensor.shape):
        raise ModelNotFoundError(f"{file}: {name} has shape {tuple(tensor.shape)}, the config expects "
                                 f"{tuple(current.shape)}: the checkpoint does not match {name.split('.')[0]} of "
                                 f"this config")
    module._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)


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


def quiet_loading_bars() -> None:
    """Turn off diffusers' and transformers' per-file loading bars (they would bury the CLI's step bar and
    fill the bot's log). Process-wide; called by the CLI and the bot at start-up."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
