"""Safetensors files as memory-mapped CPU tensors, and safetensors files written one tensor at a time.

Reading (`MappedFile`): the file is mapped copy-on-write and read-only in practice (MAP_PRIVATE, through
`torch.UntypedStorage.from_file(shared=False)`); each tensor is a view at its header offsets. Such a
tensor costs page cache, not anonymous RAM: the kernel reads its pages on first touch and may drop them
again under memory pressure, and a write (a bug) would only copy the page, never change the file. A tensor
whose offset is not a multiple of its element size cannot be a view; it is copied (rare: safetensors files
written by torch keep tensors aligned).

Writing (`StreamingWriter`): the header is planned from names, dtypes and shapes, the whole file is
reserved on disk first (`posix_fallocate`: a full disk fails at once, not after minutes), then tensors are
written at their offsets in any order, written-back pages are dropped from the page cache as it goes, and
the file appears under its final name only when complete (temp file + fsync + rename).

`read_tensor` reads one tensor with `pread` into anonymous memory: what a converter uses so that the
source's pages do not stay mapped into the process (its RSS stays near one tensor, not the file).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
ALIGN = 4096  # every tensor (and the data section) starts on a page: whole pages stream cleanly
PAD_PREFIX = "__fluxbot_pad__."  # filler entries that keep a written file hole-free, as the format requires
HEADER_LIMIT = 100 << 20
SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
DROP_EVERY = 256 << 20  # bytes written between write-backs that drop the cache file's pages


class SafetensorsFormatError(ValueError):
    """The file is not a readable safetensors file; the message says why."""


class DiskFullError(OSError):
    """The disk (or a quota / file-size limit) cannot hold a file being written; the message says how much."""


@dataclass(frozen=True)
class TensorInfo:
    """One entry of a safetensors header; `start`/`end` are absolute byte offsets in the file."""
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


# ------------------------------------------------------------------------------------------------ reading

def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """(tensors by name, `__metadata__`) of a safetensors file, without reading its data."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise SafetensorsFormatError(f"{path} is too short to be a safetensors file ({size} bytes)")
        (length,) = struct.unpack("<Q", raw)
        if length > min(HEADER_LIMIT, size - 8):
            raise SafetensorsFormatError(f"{path} has a header length of {length} bytes: not a safetensors file")
        try:
            header = json.loads(fh.read(length))
        except ValueError as e:
            raise SafetensorsFormatError(f"{path}: the safetensors header is not JSON ({e})") from None
    base = 8 + length
    meta = header.pop("__metadata__", None) or {}
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype = DTYPES[entry["dtype"]]
            begin, end = (int(x) for x in entry["data_offsets"])
            shape = tuple(int(s) for s in entry["shape"])
        except (KeyError, TypeError, ValueError):
            raise SafetensorsFormatError(f"{path}: header entry {name!r} is not understood ({entry!r:.120})") from None
        if not 0 <= begin <= end <= size - base or end - begin != _numel(shape) * _itemsize(dtype):
            raise SafetensorsFormatError(f"{path}: tensor {name} lies outside the file or has the wrong size; the "
                                         f"file is truncated or damaged")
        tensors[name] = TensorInfo(name, dtype, shape, base + begin, base + end)
    return tensors, dict(meta)


class MappedFile:
    """A safetensors file mapped copy-on-write; `tensor(name)` is a CPU view of the mapping (no copy)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.infos, self.metadata = read_header(self.path)
        size = self.path.stat().st_size
        self.storage = torch.UntypedStorage.from_file(str(self.path), shared=False, nbytes=size)

    def keys(self) -> list[str]:
        return [k for k in self.infos if not k.startswith(PAD_PREFIX)]

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor `name` as a view of the mapping (a copy if its offset is misaligned for its dtype)."""
        info = self.infos[name]
        size = _itemsize(info.dtype)
        if info.start % size == 0:
            t = torch.empty(0, dtype=info.dtype)
            return t.set_(self.storage, info.start // size, info.shape, _contiguous_strides(info.shape))
        raw = torch.empty(0, dtype=torch.uint8).set_(self.storage, info.start, (info.nbytes,), (1,))
        return raw.clone().view(info.dtype).reshape(info.shape)


def read_tensor(fd: int, info: TensorInfo) -> torch.Tensor:
    """One tensor read with pread into fresh (anonymous) memory; `fd` is an open file descriptor."""
    buf = torch.empty(info.nbytes, dtype=torch.uint8)
    view = memoryview(buf.numpy())
    done = 0
    while done < info.nbytes:
        n = os.preadv(fd, [view[done:]], info.start + done)
        if n <= 0:
            raise SafetensorsFormatError(f"tensor {info.name}: the file ended early (truncated download?)")
        done += n
    return buf.view(info.dtype).reshape(info.shape)


def drop_cached_pages(fd: int, start: int = 0, length: int = 0) -> None:
    """Ask the kernel to drop a file range from the page cache (clean pages only; advisory)."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)


def is_file_backed(tensor: torch.Tensor) -> bool:
    """True when the tensor's memory is a mapping of a file (page cache), per /proc/self/maps (Linux)."""
    if tensor.device.type != "cpu" or tensor.untyped_storage().nbytes() == 0:
        return False
    ptr = tensor.untyped_storage().data_ptr()
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                fields = line.split()
                low, high = (int(x, 16) for x in fields[0].split("-"))
                if low <= ptr < high:
                    return len(fields) >= 6 and fields[5].startswith("/")
    except OSError:
        return False
    return False


def memory_status() -> dict[str, int]:
    """This process's anonymous and file-backed resident bytes (and their peak) from /proc/self/status."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


# ------------------------------------------------------------------------------------------------ writing

@dataclass(frozen=True)
class PlannedTensor:
    """What a writer needs to know about a tensor before its data exists."""
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return _numel(self.shape) * _itemsize(self.dtype)


class StreamingWriter:
    """Writes a safetensors file tensor by tensor at planned offsets; `commit()` renames it into place.

    Use as a context manager: leaving it without `commit()` (an error) removes the temp file.
    """

    def __init__(self, path: str | os.PathLike, tensors: Iterable[PlannedTensor], metadata: dict[str, str], *,
                 align: int = ALIGN):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.header, self.offsets, self.size = _plan_layout(list(tensors), metadata, align)
        self.pending = {name for name in self.offsets if not name.startswith(PAD_PREFIX)}
        self.fd = -1
        self._since_drop = 0

    def __enter__(self) -> "StreamingWriter":
        # 1. Reserve the whole file now: a full disk fails here, in a second, with the size needed.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(self.fd, 0, self.size)
            # 2. The header, padded with spaces so that the data starts on a page.
            self._pwrite(memoryview(self.header), 0)
        except OSError as e:
            self._abort()
            raise self._space_error(e) from None
        return self

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write `tensor` (the planned dtype and shape) at its offset."""
        start, info = self.offsets[name]
        if tensor.dtype != info.dtype or tuple(tensor.shape) != info.shape:
            raise ValueError(f"{name}: planned {info.dtype}{list(info.shape)}, got {tensor.dtype}{list(tensor.shape)}")
        data = tensor.detach().contiguous().view(torch.uint8).reshape(-1).numpy()
        try:
            self._pwrite(memoryview(data), start)
        except OSError as e:
            raise self._space_error(e) from None
        self.pending.discard(name)
        self._since_drop += info.nbytes
        if self._since_drop >= DROP_EVERY:  # written pages leave the page cache once on disk
            os.fdatasync(self.fd)
            drop_cached_pages(self.fd)
            self._since_drop = 0

    def commit(self) -> Path:
        """Check that every tensor was written, flush to disk and rename into place."""
        if self.pending:
            raise ValueError(f"{len(self.pending)} planned tensors were never written (first: {sorted(self.pending)[0]})")
        try:
            os.fsync(self.fd)
            drop_cached_pages(self.fd)
            os.close(self.fd)
            self.fd = -1
            os.replace(self.tmp, self.path)
        except OSError as e:
            raise self._space_error(e) from None
        _fsync_dir(self.path.parent)
        return self.path

    def __exit__(self, *exc) -> None:
        if self.fd >= 0 or self.tmp.exists():
            self._abort()

    def _pwrite(self, view: memoryview, offset: int) -> None:
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], offset + done)

    def _abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.tmp.unlink(missing_ok=True)

    def _space_error(self, e: OSError) -> OSError:
        if e.errno not in SPACE_ERRORS:
            return e
        return DiskFullError(e.errno, f"not enough disk space for {self.path} ({self.size / 2**30:.2f} GiB needed, "
                                      f"{_free_gib(self.path.parent)} free): {os.strerror(e.errno or 0)}")


def _plan_layout(tensors: list[PlannedTensor], metadata: dict[str, str], align: int
                 ) -> tuple[bytes, dict[str, tuple[int, PlannedTensor]], int]:
    """(header bytes with its 8-byte length, absolute offset of each tensor, file size). Every tensor starts on
    an `align` boundary; the gaps are U8 filler entries so the data section has no holes (align 1: none, the
    plain layout of files written by torch, header padded to 8 bytes)."""
    # 1. Relative offsets, with fillers where a tensor would start off a boundary.
    entries: list[tuple[PlannedTensor, int]] = []
    at = 0
    for t in tensors:
        gap = -at % align
        if gap:
            entries.append((PlannedTensor(f"{PAD_PREFIX}{len(entries)}", torch.uint8, (gap,)), at))
            at += gap
        entries.append((t, at))
        at += t.nbytes
    # 2. The JSON header, padded so that 8 + its length is a multiple of ALIGN.
    header: dict = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
    for t, rel in entries:
        header[t.name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [rel, rel + t.nbytes]}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % max(align, 8))
    base = 8 + len(text)
    offsets = {t.name: (base + rel, t) for t, rel in entries}
    return struct.pack("<Q", len(text)) + text, offsets, base + at


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _free_gib(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**30:.2f} GiB"
    except OSError:
        return "unknown"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))
