"""LoRA files on disk: which are installed, what they are called, their hashes and their trigger words.

No torch here: the bot lists and checks LoRAs (autocomplete, `/loras`, `<lora:name:0.8>` in a prompt) without
loading a model. The weights themselves are read by engine/lora_convert.py.

- A LoRA is a `*.safetensors` file in `[engine] loras_dir`; its name is the file name without the extension.
- Hashes (`LoraLibrary.hashes`): the file's SHA-256 (what a job records, so `/show` can tell a changed file) and
  A1111's short hash, the first 12 hex of the SHA-256 of the file after its safetensors header (kohya's
  "addnet" hash, which A1111 writes in `Lora hashes:` and civitai calls AutoV3).
- `<lora:name:0.8>` in a prompt (A1111's syntax): `split_prompt_loras` takes the tags out of the prompt.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine import limits
from engine.lora_errors import LoraError
from engine.lora_shapes import ModelWidths, check_fits, check_reserve

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"
DEMO_LORA = "tiny-random-demo"  # the demo LoRA tiny-random writes (engine/tiny.py)
SHORT_HASH_LEN = 12  # A1111's `shorthash`
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
# `<lora:name>` or `<lora:name:0.8>`; A1111 also allows more fields (`:te=…`), which fluxbot refuses.
_TAG = re.compile(r"<lora:([^<>]*)>", re.IGNORECASE)
_NAME = re.compile(r"^[^/\\<>:\x00-\x1f]{1,100}$")


@dataclass(frozen=True)
class LoraFile:
    """One installed LoRA file."""
    name: str
    path: Path
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class LoraHashes:
    sha256: str        # of the whole file (what a job records)
    short: str         # A1111's short hash: sha256 of the bytes after the header, first 12 hex


@dataclass(frozen=True)
class LoraInfo:
    """What `/loras` shows of a file: its name, size and the trigger words its metadata names."""
    name: str
    size: int
    triggers: tuple[str, ...]


# --------------------------------------------------------------------------------------------- the folder

class LoraLibrary:
    """The LoRAs of one folder, with their hashes and their header check's verdict remembered per (size, mtime) so a
    file is read once. `widths()` gives the model's widths (`engine.lora_shapes.model_widths`) for `check`."""

    def __init__(self, folder: str | os.PathLike, widths: Callable[[], ModelWidths | None] | None = None,
                 reserve_rank: int | None = None):
        self.folder = Path(folder)
        self.widths = widths or (lambda: None)
        self.reserve_rank = reserve_rank       # [engine] lora_reserve_rank, for `check_reserve` (None: unchecked)
        self._hashes: dict[tuple[str, int, int], LoraHashes] = {}
        self._verdicts: dict[tuple, tuple[str, int]] = {}    # ("", bytes of its pairs) when it fits, else (why, 0)

    def files(self) -> list[LoraFile]:
        """Every `*.safetensors` file of the folder (not its subfolders), sorted by name."""
        if not self.folder.is_dir():
            return []
        out = []
        for path in self.folder.iterdir():
            if path.suffix.lower() != SUFFIX or path.name.startswith(".") or not path.is_file():
                continue
            stat = path.stat()
            out.append(LoraFile(path.stem, path, stat.st_size, stat.st_mtime_ns))
        return sorted(out, key=lambda f: f.name.lower())

    def names(self) -> list[str]:
        return [f.name for f in self.files()]

    def find(self, name: str) -> LoraFile:
        """The file of a LoRA name (the file name without .safetensors, any case); LoraError if none. Names
        never reach outside the folder."""
        text = check_name(name.strip())
        files = self.files()
        for f in files:
            if f.name == text:
                return f
        for f in files:
            if f.name.lower() == text.lower():
                return f
        raise LoraError(f"There is no LoRA named '{text}'. {self._installed(files)}")

    @staticmethod
    def at(path: str | os.PathLike) -> LoraFile:
        """A LoRA file named by its path (the CLI's `--lora PATH`); LoraError if it is not a file."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise LoraError(f"LoRA file {path} does not exist.")
        stat = path.stat()
        return LoraFile(path.stem, path, stat.st_size, stat.st_mtime_ns)

    def find_or_at(self, text: str) -> LoraFile:
        """A name, or a path when `text` looks like one (ends in .safetensors or has a slash)."""
        if text.strip().lower().endswith(SUFFIX) or "/" in text or os.sep in text:
            return self.at(text.strip())
        return self.find(text)

    def hashes(self, lora: LoraFile) -> LoraHashes:
        """The file's SHA-256 and A1111 short hash, read once per (path, size, mtime)."""
        key = (str(lora.path), lora.size, lora.mtime_ns)
        if key not in self._hashes:
            self._hashes[key] = hash_file(lora.path)
        return self._hashes[key]

    def check(self, lora: LoraFile) -> int:
        """`check_lora_header` against the model's widths, its verdict read once per (path, size, mtime, model):
        LoraError saying why the file cannot be used with this model; else the bytes its pairs take on the device."""
        widths = self.widths()
        key = (str(lora.path), lora.size, lora.mtime_ns, widths.ident if widths else "")
        if key not in self._verdicts:
            try:
                self._verdicts[key] = ("", check_lora_header(lora.path, widths))
            except LoraError as e:
                self._verdicts[key] = (str(e), 0)
        why, nbytes = self._verdicts[key]
        if why:
            raise LoraError(why)
        return nbytes

    def check_reserve(self, loras: list[LoraFile]) -> None:
        """LoraError when these LoRAs (a job's, strength-0 ones left out) together need more GPU memory than every
        plan keeps for them (`lora_shapes.check_reserve`); unchecked without the model's widths."""
        widths = self.widths()
        if loras and widths is not None and self.reserve_rank is not None:
            check_reserve([(f.name, self.check(f)) for f in loras], widths, self.reserve_rank)

    def info(self, lora: LoraFile) -> LoraInfo:
        try:
            _keys, metadata = read_header(lora.path)
        except LoraError:
            metadata = {}
        return LoraInfo(lora.name, lora.size, trigger_words(metadata))

    def _installed(self, files: list[LoraFile]) -> str:
        if not files:
            return f"No LoRAs are installed (the folder is {self.folder})."
        names = ", ".join(f.name for f in files[:10])
        more = f" and {len(files) - 10} more" if len(files) > 10 else ""
        return f"Installed: {names}{more}."


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise LoraError(f"'{name[:100]}' is not a LoRA name: use the file name without .safetensors "
                        f"(no slashes, colons or angle brackets).")
    return name


# --------------------------------------------------------------------------------------------- the file

def read_header(path: Path) -> tuple[list[str], dict[str, str]]:
    """(tensor names, `__metadata__`) of a safetensors file; LoraError saying what is wrong otherwise."""
    header = _raw_header(path)
    metadata = header.pop("__metadata__", None) or {}
    return list(header), {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, from the header only (no tensor data is read); LoraError as `read_header`."""
    return _shapes(path.name, _raw_header(path))


def _shapes(file: str, header: dict) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        shape = meta.get("shape") if isinstance(meta, dict) else None
        if not isinstance(shape, list) or not all(isinstance(n, int) for n in shape):
            raise LoraError(f"{file} is not a safetensors file (its header is damaged at '{name[:80]}').")
        shapes[name] = tuple(shape)
    return shapes


def _raw_header(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            size = os.fstat(fh.fileno()).st_size
            if len(head) < 8:
                raise LoraError(f"{path.name} is not a safetensors file (it is {size} bytes long).")
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise LoraError(f"{path.name} is not a safetensors file (its header is damaged or it is another "
                                f"format).")
            header = json.loads(fh.read(n))
    except OSError as e:
        raise LoraError(f"{path.name} cannot be read ({e.strerror or e}).") from None
    except (ValueError, UnicodeDecodeError):
        raise LoraError(f"{path.name} is not a safetensors file (its header is not JSON).") from None
    if not isinstance(header, dict):
        raise LoraError(f"{path.name} is not a safetensors file (its header is not a table).")
    return header


def hash_file(path: Path) -> LoraHashes:
    """SHA-256 of the whole file and of the bytes after the safetensors header, in one read; LoraError when the
    file is not a safetensors file."""
    read_header(path)
    whole, body = hashlib.sha256(), hashlib.sha256()
    with open(path, "rb") as fh:
        head = fh.read(8)
        whole.update(head)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        header = fh.read(n)
        whole.update(header)
        while chunk := fh.read(16 << 20):
            whole.update(chunk)
            body.update(chunk)
    return LoraHashes(sha256=whole.hexdigest(), short=body.hexdigest()[:SHORT_HASH_LEN])


def trigger_words(metadata: dict[str, str], most: int = 8) -> tuple[str, ...]:
    """Trigger words from a file's metadata: the model spec's `modelspec.trigger_phrase`, else the most frequent
    tags of kohya's `ss_tag_frequency` (the training captions)."""
    phrase = metadata.get("modelspec.trigger_phrase", "").strip()
    if phrase:
        return tuple(p.strip() for p in phrase.split(",") if p.strip())[:most]
    try:
        freq = json.loads(metadata.get("ss_tag_frequency", "") or "{}")
    except ValueError:
        return ()
    counts: dict[str, int] = {}
    for tags in (freq.values() if isinstance(freq, dict) else ()):
        if isinstance(tags, dict):
            for tag, n in tags.items():
                if isinstance(n, (int, float)):
                    counts[str(tag).strip()] = counts.get(str(tag).strip(), 0) + int(n)
    ranked = sorted((t for t in counts if t), key=lambda t: (-counts[t], t))
    return tuple(ranked[:most])


# ------------------------------------------------------------------------------------------- the prompt

def split_prompt_loras(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """The prompt without its `<lora:name:strength>` tags, and the (name, strength) of each tag in order
    (strength 1 when left out). A bad strength raises LoraError. Spaces left where a tag was are collapsed."""
    found: list[tuple[str, float]] = []

    def take(match: re.Match) -> str:
        fields = match.group(1).split(":")
        name = check_name(fields[0].strip())
        if len(fields) > 2:
            raise LoraError(f"<lora:{match.group(1)}>: write <lora:name> or <lora:name:strength>.")
        strength = 1.0
        if len(fields) == 2 and fields[1].strip():
            try:
                strength = float(fields[1])
            except ValueError:
                raise LoraError(f"<lora:{match.group(1)}>: the strength must be a number, e.g. "
                                f"<lora:{name}:0.8>.") from None
        try:
            found.append((name, limits.check_lora_strength(strength)))
        except limits.LimitError as e:
            raise LoraError(f"<lora:{match.group(1)}>: {e}") from None
        return " "

    text = _TAG.sub(take, prompt)
    if found:
        text = re.sub(r"[ \t]{2,}", " ", text).strip()
    return text, found


def prompt_tags(loras: list[tuple[str, float]]) -> str:
    """A1111's tags for the LoRAs of a job, as its PNG's prompt carries them: `<lora:name:0.8>` each."""
    return " ".join(f"<lora:{name}:{strength:g}>" for name, strength in loras)


# ------------------------------------------------------------------------------------------- quick check

_PAIR_KEY = re.compile(r"\.(lora_down|lora_up|lora_A|lora_B|down|up)\.weight$")
_FLUX_BFL = re.compile(r"^(?:lora_unet_|(?:model\.)?diffusion_model\.)(double_blocks|single_blocks|img_in|txt_in|time_in|"
                       r"vector_in|guidance_in|final_layer)")


def check_lora_header(path: Path, widths: ModelWidths | None = None) -> int:
    """What can be told from a file's header alone, before any job: a safetensors file with LoRA pairs, not a DoRA,
    Control LoRA or T5 LoRA, no kohya U-Net names of another model (SDXL's `lora_unet_down_blocks…`), and, given
    the model's `widths` (engine/lora_shapes.py), every pair of the model's widths: the check the job's run makes
    (engine/lora_convert.py), on the header's shapes. Returns the bytes its pairs take on the device (0 without
    `widths`)."""
    header = _raw_header(path)          # read once: the names here, the shapes for the widths check below
    keys = [k for k in header if k != "__metadata__"]
    name = path.name
    if not any(_PAIR_KEY.search(k) for k in keys):
        raise LoraError(f"{name} holds no LoRA weights: it is not a LoRA.")
    if any("dora_scale" in k or "lora_magnitude_vector" in k for k in keys):
        raise LoraError(f"{name} is a DoRA, which fluxbot does not support (only plain LoRAs).")
    if any(k.endswith(("query_norm.scale", "key_norm.scale")) for k in keys):
        raise LoraError(f"{name} is a Control LoRA (it changes norms and the input layer), which fluxbot does not "
                        f"support.")
    if any("t5xxl" in k or k.startswith(("lora_te2_", "text_encoder_2.")) for k in keys):
        raise LoraError(f"{name} changes the T5 text encoder, which fluxbot does not support.")
    unet = [k for k in keys if k.startswith("lora_unet_")]
    if unet and not all(_FLUX_BFL.match(k) for k in unet):
        raise LoraError(f"{name} is not a LoRA for FLUX: it changes layers FLUX does not have (a LoRA for another "
                        f"model, e.g. SDXL?).")
    return check_fits(name, _shapes(name, header), widths) if widths is not None else 0
