"""The DiT's fp8 cache file: the checkpoint converted once into what the engine runs, then memory-mapped.

A 23.8 GB bf16 single-file checkpoint (BFL key layout, e.g. majicflus_v134) or a diffusers folder's bf16
shards are converted tensor by tensor — read with pread, split/renamed to diffusers' layout, cast to the
storage dtype of `[engine] fp8` (engine/precision.py decides which tensors are fp8) and written at their
place in one safetensors file — so the process never holds more than a few tensors (peak RAM is bounded
by the largest tensor, ~0.12 GiB for FLUX.1-dev, not by the model). Later starts only map the file.

Where: `<folder of the DiT>/.fluxbot-cache/<name>.<fp8 mode>.<key>.safetensors`. The key hashes the
format version, the fp8 mode, the DiT config and each source file's name, size and mtime, so a changed
source or setting builds a new cache (and the old one of the same model is deleted first: one cache per
model, ~11 GiB for FLUX.1-dev in all-linear mode). Writing is atomic (temp file + rename) and reserves the
whole size first, so a full disk fails at once with the size needed. Two engines starting together take
turns through a lock file; the second maps what the first built.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from engine.bfl_keys import iter_bfl_to_diffusers
from engine.errors import EngineError, ModelNotFoundError
from engine.mmap_weights import (PAD_PREFIX, DiskFullError, PlannedTensor, SafetensorsFormatError,
                                 StreamingWriter, drop_cached_pages, read_header, read_tensor)
from engine.precision import COMPUTE, STORAGE

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CACHE_DIR = ".fluxbot-cache"
BFL_PREFIX = "model.diffusion_model."  # all-in-one checkpoints carry the VAE and encoders too


# ------------------------------------------------------------------------------------------------ planning

def planned_tensors(dit: torch.nn.Module, in_fp8: set[str]) -> dict[str, PlannedTensor]:
    """Every parameter of a (meta) DiT with the dtype the engine stores it in: fp8 for `in_fp8` modules,
    else bf16; in the model's order (a block's tensors lie together in the file)."""

    out: dict[str, PlannedTensor] = {}
    for name, p in dit.named_parameters():
        dtype = STORAGE if name.rpartition(".")[0] in in_fp8 else COMPUTE
        out[name] = PlannedTensor(name, dtype, tuple(p.shape))
    return out


def source_is_ready(files: list[Path], planned: dict[str, PlannedTensor]) -> bool:
    """True when the files already hold exactly the planned tensors (diffusers names, storage dtypes): they are
    mapped as they are and no cache is written (e.g. a diffusers folder with `[engine] fp8 = "off"`)."""
    seen: dict[str, tuple] = {}
    for file in files:
        try:
            infos, _ = read_header(file)
        except (SafetensorsFormatError, OSError):
            return False  # the conversion reports what is wrong with it
        seen.update({k: (i.dtype, i.shape) for k, i in infos.items()})
    return seen == {k: (t.dtype, t.shape) for k, t in planned.items()}


def cache_path(files: list[Path], config_dir: Path, fp8: str) -> Path:
    """Where the cache of these source files in mode `fp8` lives (see the module doc for the key)."""
    first = files[0]
    name = first.stem if len(files) == 1 and first.parent.name != "transformer" else "transformer"
    name = name.replace(".", "_")  # the first dot ends the model's part of the name (stale caches, lock)
    return first.parent / CACHE_DIR / f"{name}.{fp8}.{_key(files, config_dir, fp8)}.safetensors"


def _key(files: list[Path], config_dir: Path, fp8: str) -> str:
    h = hashlib.sha256(f"fluxbot-dit-cache v{FORMAT_VERSION} fp8={fp8}\n".encode())
    config = config_dir / "config.json"
    h.update(config.read_bytes() if config.exists() else b"")
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


# ------------------------------------------------------------------------------------------------ building

def ensure(path: Path, files: list[Path], config_dir: Path, fp8: str, planned: dict[str, PlannedTensor],
           tensors: Callable[[], Iterable[tuple[str, torch.Tensor]]]) -> bool:
    """Make sure a complete cache is at `path`; returns True when this call built it.

    OSError (PermissionError, a read-only file system) when the folder cannot be written: the caller
    converts into RAM instead;
    EngineError when the disk is full; ModelNotFoundError when the source is not a FLUX DiT.
    """
    path.parent.mkdir(exist_ok=True)
    with _locked(path.parent / f"{path.name.split('.')[0]}.lock"):
        # 1. Already there (built by an earlier start, or by an engine that held the lock before us).
        if _is_complete(path, planned):
            return False
        # 2. Older caches of this model are stale now: free their space first.
        _remove_stale(path)
        # 3. Convert, tensor by tensor.
        t0 = time.perf_counter()
        total = sum(t.nbytes for t in planned.values())
        log.info("converting %s to %s (%.1f GiB, once; later starts map it)", _names(files), path, total / 2**30)
        metadata = {"format": f"fluxbot-dit-cache/{FORMAT_VERSION}", "fp8": fp8,
                    "sources": json.dumps([f.name for f in files])}
        try:
            with StreamingWriter(path, planned.values(), metadata) as writer:
                for name, tensor in tensors():
                    writer.write(name, tensor)
                if writer.pending:
                    raise ModelNotFoundError(f"{files[0]} lacks {len(writer.pending)} DiT tensors (first: "
                                             f"{sorted(writer.pending)[0]}): the download is incomplete or it is not "
                                             f"a FLUX.1 DiT; download it again")
                writer.commit()
        except DiskFullError as e:
            raise EngineError(f"cannot write the DiT's fp8 cache: {e.strerror}. Free space there (or move the "
                              f"model to a disk with room); the cache makes starts fast and keeps the DiT in "
                              f"page cache instead of RAM") from None
        seconds = time.perf_counter() - t0
        log.info("fp8 cache written in %.1f s (%.2f GB/s of output): %s", seconds, total / 1e9 / max(seconds, 1e-9),
                 path)
        return True


def converted_tensors(files: list[Path], config, planned: dict[str, PlannedTensor]
                      ) -> Iterator[tuple[str, torch.Tensor]]:
    """(diffusers name, tensor in its planned dtype) of every DiT tensor of the files, one source tensor in
    memory at a time; BFL layout is converted on the fly; names the DiT lacks or wrong shapes raise
    ModelNotFoundError. Source pages are dropped from the page cache once read."""
    for file in files:
        for name, tensor in _read_dit_tensors(file, config):
            want = planned.get(name)
            if want is None:
                raise ModelNotFoundError(f"{file} holds {name}, which a FLUX.1 DiT does not have: it is another kind "
                                         f"of model, or a FLUX variant this config does not describe")
            if tuple(tensor.shape) != want.shape:
                raise ModelNotFoundError(f"{file}: {name} has shape {tuple(tensor.shape)}, the config expects "
                                         f"{want.shape}: the checkpoint does not match {name.split('.')[0]} of this "
                                         f"FLUX config")
            # bf16 first: an fp32 file rounds to the same fp8 values as the bf16 release
            yield name, tensor.to(torch.bfloat16).to(want.dtype)


def _read_dit_tensors(file: Path, config) -> Iterator[tuple[str, torch.Tensor]]:
    """(diffusers name, tensor) of one safetensors file, converting BFL keys and skipping non-DiT parts."""
    try:
        infos, _ = read_header(file)
        fd = os.open(file, os.O_RDONLY)
    except (SafetensorsFormatError, OSError) as e:
        raise ModelNotFoundError(f"{file} is not a readable safetensors file ({_short(e)}); download it again "
                                 f"(`python -m bot download --verify` checks it)") from e
    try:
        # 1. All-in-one checkpoints carry the VAE and encoders too: keep the DiT.
        keys = [k for k in infos if not k.startswith(PAD_PREFIX)]
        prefix = BFL_PREFIX if any(k.startswith(BFL_PREFIX) for k in keys) else ""
        short = [k.removeprefix(prefix) for k in keys if k.startswith(prefix)]
        present = set(short)

        def get(key: str) -> torch.Tensor:
            if key not in present:
                raise KeyError(f"missing tensor {key}")
            info = infos[prefix + key]
            tensor = read_tensor(fd, info)
            drop_cached_pages(fd, info.start, info.nbytes)
            return tensor

        # 2. BFL layout is converted on the fly; diffusers layout is read as is.
        if any(k.startswith("double_blocks.") for k in short):
            try:
                yield from iter_bfl_to_diffusers(get, short, config)
            except (KeyError, ValueError, RuntimeError) as e:
                raise ModelNotFoundError(f"{file} is not a FLUX.1 DiT checkpoint matching its config "
                                         f"({_short(e)})") from e
        else:
            for k in short:
                yield k, get(k)
    except (SafetensorsFormatError, OSError) as e:
        raise ModelNotFoundError(f"{file} could not be read ({_short(e)}); download it again "
                                 f"(`python -m bot download --verify` checks it)") from e
    finally:
        os.close(fd)


def _is_complete(path: Path, planned: dict[str, PlannedTensor]) -> bool:
    """The file exists (renamed into place only when complete) and holds exactly the planned tensors."""
    if not path.exists():
        return False
    try:
        infos, meta = read_header(path)
    except (SafetensorsFormatError, OSError) as e:
        log.warning("the fp8 cache %s is unreadable (%s): building it again", path, e)
        return False
    got = {k: (i.dtype, i.shape) for k, i in infos.items() if k in planned}
    if meta.get("format") != f"fluxbot-dit-cache/{FORMAT_VERSION}" or got != {
            k: (t.dtype, t.shape) for k, t in planned.items()}:
        log.warning("the fp8 cache %s does not match this DiT: building it again", path)
        return False
    return True


def _remove_stale(path: Path) -> None:
    """Delete the other caches of the same model (another source version or fp8 mode), and temp files that a
    conversion killed midway left (the caller holds the model's lock: no conversion of it is running)."""
    model = path.name.split(".")[0]
    stale = [p for p in path.parent.glob(f"{model}.*.safetensors") if p != path]
    stale += list(path.parent.glob(f".{model}.*.tmp"))
    for old in stale:
        log.info("removing the stale fp8 cache file %s (%.1f GiB)", old, old.stat().st_size / 2**30)
        old.unlink(missing_ok=True)


@contextmanager
def _locked(lock_file: Path):
    """An exclusive advisory lock (flock) held for the block: one engine converts, the others wait."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _names(files: list[Path]) -> str:
    return str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} files)"


def _short(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
