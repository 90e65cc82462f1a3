"""An image as a job's input: an `/imagine` attachment (untrusted) or a result's own PNG (🔍 Upscale ×2), stored
as a clean PNG named by its SHA-256 beside the job images (`<images_dir>/inputs/<sha256>.png`).

An attachment is checked before it is downloaded (its declared size against `[limits] max_input_mb`, its content
type), downloaded from Discord's CDN in chunks that stop as soon as the body passes the limit (a declared size may
lie), a failed download (the link expired or the file was removed: 404/403, Discord's CDN down, a timeout) answered
as an `ImageInputError` that says what failed and to attach the image again, then decoded by `engine.image_input.sanitize_image` (Pillow's decompression-bomb limit; only the pixels are
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

import aiohttp

from engine.image_files import input_path
from engine.image_input import INPUT_TYPES, CleanImage, ImageInputError, sanitize_image, store_image

if TYPE_CHECKING:
    import discord

log = logging.getLogger(__name__)

_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
DOWNLOAD_TIMEOUT_S = 60.0   # one attachment's whole download (Discord's CDN serves a few MB in well under a second)
CHUNK_BYTES = 64 * 1024


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
    data = await download(attachment.url, max_mb=max_mb)
    clean = await asyncio.to_thread(sanitize_image, data)
    return await asyncio.to_thread(_store, clean, images_dir)


async def download(url: str, *, max_mb: float, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> bytes:
    """An attachment's bytes from Discord's CDN (a plain GET, as discord.py's `Attachment.read` makes it), read in
    chunks and stopped once past `max_mb`; ImageInputError, for the user, when it cannot be had."""
    limit = int(max_mb * 1024 * 1024)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            async with session.get(url) as response:
                # 1. Discord's answer: the file, or why not.
                if response.status != 200:
                    log.info("attachment download refused by Discord's CDN: HTTP %s", response.status)
                    raise ImageInputError(_unavailable(response.status))
                # 2. The body, never more than the limit (its Content-Length, then what actually comes).
                if response.content_length is not None and response.content_length > limit:
                    raise ImageInputError(_too_large(max_mb))
                data = bytearray()
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    data += chunk
                    if len(data) > limit:     # the declared size lied: stop reading here
                        log.info("attachment download stopped past %d bytes (its declared size was smaller)", limit)
                        raise ImageInputError(_too_large(max_mb))
                return bytes(data)
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        log.info("attachment download failed: %s", type(e).__name__)
        raise ImageInputError(f"The image could not be downloaded from Discord ({_why(e)}). Attach it again and "
                              f"send the command again.") from None


def _unavailable(status: int) -> str:
    if status in (403, 404, 410):
        return (f"The image could not be downloaded from Discord (HTTP {status}: the attachment is gone or its link "
                f"expired). Attach it again and send the command again.")
    return (f"The image could not be downloaded from Discord (HTTP {status}). Attach it again and send the command "
            f"again in a moment.")


def _too_large(max_mb: float) -> str:
    return (f"The image is larger than its attachment said: this bot accepts at most {max_mb:g} MB. Send a smaller "
            f"image.")


def _why(error: BaseException) -> str:
    return "it took too long" if isinstance(error, asyncio.TimeoutError) else "the connection failed"


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
