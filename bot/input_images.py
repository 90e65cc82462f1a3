"""An image as a job's input: an `/imagine` attachment (untrusted) or a result's own PNG (🔍 Upscale ×2), stored
as a clean PNG named by its SHA-256 beside the job images (`<images_dir>/inputs/<sha256>.png`).

An attachment is checked before it is downloaded (its declared size against `[limits] max_input_mb`, its content
type), then decoded by `engine.image_input.sanitize_image` (Pillow's decompression-bomb limit; only the pixels are
kept: no text chunks, EXIF, GPS or colour profile). The stored file is what the job records (path and SHA-256), so
Reroll and `/show` use the same input. The file is named by `engine.image_files.input_path` and shared by every job
that names it; it is deleted once no job needs it any more (bot/input_retention.py: after its jobs' PNGs were
pruned by `[storage]`, or at once when no job names it, e.g. an upload whose request was then refused).
"""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.image_files import input_path
from engine.image_input import INPUT_TYPES, CleanImage, ImageInputError, sanitize_image, store_image

if TYPE_CHECKING:
    import discord

log = logging.getLogger(__name__)

_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


@dataclass(frozen=True)
class StoredInput:
    path: Path
    sha256: str
    width: int
    height: int


def check_attachment(filename: str, size: int, content_type: str | None, max_mb: float) -> None:
    """ImageInputError before any download: too large (declared size) or not an image type."""
    if size > max_mb * 1024 * 1024:
        raise ImageInputError(f"The image is {size / 2**20:.1f} MB; this bot accepts at most {max_mb:g} MB.")
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind and kind not in INPUT_TYPES:
        raise ImageInputError(f"The attachment is {kind}, not an image: send a PNG, JPEG, WebP, GIF or BMP.")
    if not kind and not filename.lower().endswith(_SUFFIXES):
        raise ImageInputError("The attachment is not an image: send a PNG, JPEG, WebP, GIF or BMP.")


async def take_attachment(attachment: "discord.Attachment", *, max_mb: float, images_dir: str | Path) -> StoredInput:
    """Check, download, sanitize and store an attachment (decoding runs off the event loop)."""
    check_attachment(attachment.filename, attachment.size, attachment.content_type, max_mb)
    data = await attachment.read()
    if len(data) > max_mb * 1024 * 1024:   # the declared size lied
        raise ImageInputError(f"The image is larger than {max_mb:g} MB.")
    clean = await asyncio.to_thread(sanitize_image, data)
    return await asyncio.to_thread(_store, clean, images_dir)


async def take_file(path: Path, *, images_dir: str | Path) -> StoredInput:
    """A result's own PNG as an input (Upscale): its pixels stored the same way (its metadata left out)."""
    try:
        return await asyncio.to_thread(store_file, path, images_dir=images_dir)
    except FileNotFoundError:
        raise ImageInputError("This image is no longer on disk (it was pruned): /show it first, then upscale the "
                              "new message.") from None


def store_file(path: Path, *, images_dir: str | Path) -> StoredInput:
    """An image file as an input (the CLI's --image, Upscale's parent): read, sanitized, stored. Blocking."""
    clean = sanitize_image(Path(path).read_bytes())
    return _store(clean, images_dir)


def _store(clean: CleanImage, images_dir: str | Path) -> StoredInput:
    path = input_path(images_dir, clean.sha256)
    try:
        os.utime(path)          # stored before: fresh again, so retention leaves it to the job about to name it
    except FileNotFoundError:
        store_image(clean, path)
    return StoredInput(path=path, sha256=clean.sha256, width=clean.width, height=clean.height)
