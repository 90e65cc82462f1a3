"""Untrusted input images (engine/image_input.py): only the pixels are kept, bombs and non-images are refused with a
clear message, and the job size keeps the image's aspect within the limits."""
from __future__ import annotations

import io

import pytest
from PIL import Image, PngImagePlugin

from engine.image_input import (ImageInputError, can_upscale, fit_size, img2img_steps, sanitize_image,
                                upscale_size)


def _encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kw)
    return out.getvalue()


def test_only_the_pixels_are_kept():
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "secret prompt")
    info.add_text("Author", "someone@example.com")
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"          # Make
    exif[0x8825] = {1: "N"}              # GPS
    source = Image.new("RGBA", (40, 30), (10, 200, 30, 255))
    for data in (_encode(source, pnginfo=info), _encode(source.convert("RGB"), "JPEG", exif=exif)):
        clean = sanitize_image(data)
        with Image.open(io.BytesIO(clean.png)) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (40, 30)
            assert not im.info.get("parameters") and not im.info.get("Author") and not im.getexif()
            assert "icc_profile" not in im.info
        assert b"secret" not in clean.png and b"PhoneMaker" not in clean.png


def test_exif_orientation_is_applied_before_it_is_dropped():
    exif = Image.Exif()
    exif[0x0112] = 6                      # rotate 90° clockwise to display
    clean = sanitize_image(_encode(Image.new("RGB", (40, 20)), "JPEG", exif=exif))
    assert (clean.width, clean.height) == (20, 40)


@pytest.mark.parametrize("data, words", [
    (b"this is not an image", "could not be read as an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 50, "could not be read as an image"),
    (_encode(Image.new("RGB", (8, 8))), "at least 16 pixels"),
])
def test_bad_images_are_refused_with_a_clear_message(data, words):
    with pytest.raises(ImageInputError, match=words):
        sanitize_image(data)


def test_too_many_pixels_are_refused_before_decoding():
    big = _encode(Image.new("L", (100, 100)))           # 10,000 pixels: past twice the limit → Pillow's bomb check
    with pytest.raises(ImageInputError, match="too large"):
        sanitize_image(big, max_pixels=4000)
    medium = _encode(Image.new("L", (60, 60)))          # 3,600 pixels: past the limit, under twice it
    with pytest.raises(ImageInputError, match="at most"):
        sanitize_image(medium, max_pixels=3000)


def test_the_job_size_keeps_the_aspect_within_the_limits():
    assert fit_size(1024, 1024) == (1024, 1024)
    assert fit_size(4000, 3000) == (1184, 880)          # ~1 megapixel, 4:3
    assert fit_size(512, 384) == (512, 384)             # smaller images keep their size
    assert fit_size(100, 2000) == (256, 2048)           # a side under 256 grows, none above 2048
    assert fit_size(33, 33) == (256, 256)


def test_upscale_doubles_up_to_2048_a_side():
    assert upscale_size(1024, 1024) == (2048, 2048)
    assert upscale_size(1344, 768) == (2048, 1168)
    assert upscale_size(512, 768) == (1024, 1536)
    assert can_upscale(1024, 1024) and not can_upscale(2048, 1024)


def test_image_strength_runs_the_last_part_of_the_schedule():
    assert img2img_steps(20, 1.0) == (0, 20)
    assert img2img_steps(20, 0.6) == (8, 12)
    assert img2img_steps(20, 0.0) == (20, 0)
    assert img2img_steps(4, 0.5) == (2, 2)
