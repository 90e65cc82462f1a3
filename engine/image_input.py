"""An image as input (img2img and Upscale ×2): untrusted bytes → a clean stored PNG, its size, its steps.

No torch here (the bot checks and stores an attachment before any model work); the VAE side is
engine/img2img.py.
- `sanitize_image(data)`: decode with Pillow under a decompression-bomb limit, keep the pixels only (RGB, no
  metadata, no ICC profile, EXIF orientation applied), re-encode as PNG; returns the bytes, the size and the
  SHA-256 of the stored file, which jobs record so that `/show` and Reroll use the same input.
- `fit_size`: the job size for an input image: its aspect kept, at most ~1 megapixel (FLUX's native area) and
  never above 2048 a side, sides multiples of 16 (engine/limits.py).
- `upscale_size`: ×2, capped at 2048 a side, aspect kept.
- `img2img_steps`: how many of a job's steps an image input runs (diffusers' FluxImg2ImgPipeline rule).
"""
from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from engine import limits

log = logging.getLogger(__name__)

MAX_INPUT_PIXELS = 40_000_000       # Pillow refuses (DecompressionBombError) anything larger than twice this
TARGET_PIXELS = 1024 * 1024         # an input image is made about this large (FLUX's native area)
UPSCALE_FACTOR = 2
UPSCALE_DENOISE = 0.4               # the hires-fix strength of 🔍 Upscale ×2: keeps the composition, adds detail
UPSCALE_MAX_PIXELS = 1024 * 1024    # Upscale ×2 is offered on images of at most this many pixels (→ 2048² at most)
DEFAULT_DENOISE = 0.6               # /imagine's image strength when none is given
INPUT_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp")
_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP", "MPO"}


class ImageInputError(limits.LimitError):
    """A bad input image; the message is for the user as is."""


@dataclass(frozen=True)
class CleanImage:
    png: bytes          # the pixels only, as PNG
    width: int
    height: int
    sha256: str         # of `png`


def sanitize_image(data: bytes, *, max_pixels: int = MAX_INPUT_PIXELS) -> CleanImage:
    """Untrusted image bytes → CleanImage; ImageInputError saying what is wrong (not an image, too large…)."""
    from PIL import Image, ImageOps

    # 1. Decode under the bomb limit (a huge declared size fails before its pixels are allocated).
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # refused below, with a message
            im = Image.open(io.BytesIO(data))
        with im:
            if im.format not in _FORMATS:
                raise ImageInputError(f"The attachment is a {im.format or 'unknown'} image: send a PNG, JPEG, WebP, "
                                      f"GIF or BMP.")
            if im.width * im.height > max_pixels:
                raise ImageInputError(f"The image is {im.width}x{im.height}: at most {max_pixels / 1e6:g} "
                                      f"megapixels are accepted.")
            im.seek(0)
            im = ImageOps.exif_transpose(im)
            rgb = im.convert("RGB")
    except ImageInputError:
        raise
    except Image.DecompressionBombError:
        raise ImageInputError(f"The image is too large: at most {max_pixels / 1e6:g} megapixels are "
                              f"accepted.") from None
    except Exception as e:  # Pillow raises many kinds for broken files
        raise ImageInputError(f"The attachment could not be read as an image ({type(e).__name__}).") from None
    if min(rgb.size) < 16:
        raise ImageInputError(f"The image is {rgb.width}x{rgb.height}: it must be at least 16 pixels a side.")
    # 2. Pixels only: a new image (no info, no ICC, no EXIF) written as PNG.
    clean = Image.new("RGB", rgb.size)
    clean.paste(rgb)
    out = io.BytesIO()
    clean.save(out, format="PNG")
    png = out.getvalue()
    return CleanImage(png=png, width=clean.width, height=clean.height, sha256=hashlib.sha256(png).hexdigest())


def store_image(clean: CleanImage, path: Path) -> Path:
    """Write a sanitized image atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(clean.png)
    tmp.replace(path)
    return path


def read_checked(path: str | Path, sha256: str | None):
    """The RGB image stored at `path`; ImageInputError when it is gone or its SHA-256 is not `sha256`."""
    from PIL import Image

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError:
        raise ImageInputError(f"The input image of this job ({path.name}) is gone: it cannot be made again.") from None
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise ImageInputError(f"The input image of this job ({path.name}) has changed since the job was made.")
    Image.MAX_IMAGE_PIXELS = MAX_INPUT_PIXELS
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ sizes

def _round16(x: float) -> int:
    return int(min(limits.MAX_SIDE, max(limits.MIN_SIDE, round(x / limits.SIDE_STEP) * limits.SIDE_STEP)))


def fit_size(width: int, height: int, target_pixels: int = TARGET_PIXELS) -> tuple[int, int]:
    """The job size of an input image: its aspect, about `target_pixels` at most (smaller images keep their
    size unless a side is under 256), each side a multiple of 16 from 256 to 2048."""
    scale = min(1.0, (target_pixels / (width * height)) ** 0.5)       # 1. not above the target area
    scale = max(scale, limits.MIN_SIDE / min(width, height))            # 2. no side under 256
    scale = min(scale, limits.MAX_SIDE / max(width, height))            # 3. no side over 2048
    return _round16(width * scale), _round16(height * scale)


def upscale_size(width: int, height: int, factor: float = UPSCALE_FACTOR) -> tuple[int, int]:
    """×factor, capped at 2048 a side (the aspect kept), multiples of 16."""
    scale = min(float(factor), limits.MAX_SIDE / max(width, height))
    return _round16(width * scale), _round16(height * scale)


def can_upscale(width: int, height: int) -> bool:
    """Whether ×2 makes the image larger (a side already at 2048 cannot grow)."""
    w, h = upscale_size(width, height)
    return w > width and h > height


def img2img_steps(steps: int, denoise: float) -> tuple[int, int]:
    """(first step, steps run) of an image input: diffusers' FluxImg2ImgPipeline.get_timesteps rule, so that
    0.6 of 20 steps runs the last 12 of the 20-step schedule. Strength 0 runs none."""
    init = min(steps * denoise, steps)
    start = int(max(steps - init, 0))
    return start, steps - start
