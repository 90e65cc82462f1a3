"""An image as input on the tiny model (CPU): strength 0 returns the image through the VAE, 1 ignores it, in between
the schedule is diffusers' FluxImg2ImgPipeline's; same input and seed → same pixels on every plan; Upscale ×2 makes
a twice-as-large image; a changed or missing input is refused."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import EngineError
from engine.image_input import UPSCALE_DENOISE, img2img_steps, sanitize_image, store_image, upscale_size
from engine.img2img import encode_image, schedule
from engine.pipeline import Engine
from engine.png import format_parameters, image_params, read_png_params, save_png
from engine.spec import JobSpec

SPEC = JobSpec("a red cat", seed=3, steps=4, width=256, height=256)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A stored (sanitized) 320x256 input image: a smooth gradient with a square, not the model's output."""
    y, x = np.mgrid[0:256, 0:320]
    rgb = np.stack([x * 255 // 319, y * 255 // 255, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    rgb[64:160, 96:224] = (240, 240, 30)
    clean = sanitize_image(_png_bytes(Image.fromarray(rgb)))
    path = store_image(clean, tmp_path_factory.mktemp("inputs") / "input.png")
    return path, clean.sha256


def _png_bytes(image) -> bytes:
    import io

    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def with_image(spec, source, denoise):
    path, sha = source
    return replace(spec, image=str(path), image_sha256=sha, denoise=denoise)


def test_strength_one_ignores_the_image(tiny_engine, source):
    plain = pixels(tiny_engine.generate(SPEC))
    assert np.array_equal(pixels(tiny_engine.generate(with_image(SPEC, source, 1.0))), plain)


def test_strength_zero_returns_the_image_through_the_vae_whatever_the_seed(tiny_engine, source):
    a = tiny_engine.generate(with_image(SPEC, source, 0.0))
    b = tiny_engine.generate(with_image(replace(SPEC, seed=99), source, 0.0))
    assert a.steps_done == 0 and np.array_equal(pixels(a), pixels(b))
    # exactly the input's VAE round trip, resized to the job's size
    latents = encode_image(tiny_engine.pipe, str(source[0]), source[1], 256, 256, torch.device("cpu"))
    expected = tiny_engine._decode(latents.to(torch.bfloat16), 256, 256)
    assert np.array_equal(pixels(a), np.asarray(expected, dtype=np.int16))


def test_a_middle_strength_runs_its_part_of_the_schedule_and_reproduces(tiny_engine, source):
    spec = with_image(SPEC, source, 0.5)
    steps: list[tuple[int, int]] = []
    first = tiny_engine.generate(spec, progress=lambda done, total: steps.append((done, total)))
    assert steps == [(1, 2), (2, 2)] and first.steps_done == 2       # 0.5 of 4 steps: the last 2
    assert np.array_equal(pixels(tiny_engine.generate(spec)), pixels(first))
    plain, kept = pixels(tiny_engine.generate(SPEC)), pixels(tiny_engine.generate(with_image(SPEC, source, 0.0)))
    assert not np.array_equal(pixels(first), plain) and not np.array_equal(pixels(first), kept)


def test_the_schedule_is_diffusers_img2img_schedule(tiny_engine):
    """FluxImg2ImgPipeline: the shifted txt2img schedule from step int(N - N·strength) on."""
    from diffusers import FluxImg2ImgPipeline
    from diffusers.pipelines.flux.pipeline_flux_img2img import calculate_shift, retrieve_timesteps

    pipe = tiny_engine.pipe
    ref = FluxImg2ImgPipeline(**{k: getattr(pipe, k) for k in ("scheduler", "vae", "text_encoder", "tokenizer",
                                                                "text_encoder_2", "tokenizer_2", "transformer")})
    for steps, strength, size in ((20, 0.6, 256), (20, 0.35, 512), (28, 0.4, 1024), (4, 0.9, 256)):
        seq = (size // 16) ** 2
        mu = calculate_shift(seq, 256, 4096, 0.5, 1.15)
        retrieve_timesteps(ref.scheduler, steps, "cpu", sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        expected_t, run = ref.get_timesteps(steps, strength, "cpu")
        expected_sigma = float(ref.scheduler.sigmas[ref.scheduler.begin_index])
        ours = schedule(pipe, steps, strength, size, size)
        assert ours.steps == run == img2img_steps(steps, strength)[1]
        assert ours.start_sigma == pytest.approx(expected_sigma, abs=1e-6)
        sigmas = ours.sigmas if ours.sigmas is not None else list(np.linspace(1.0, 1 / steps, steps))
        pipe.scheduler.set_timesteps(sigmas=sigmas, mu=mu, device="cpu")
        torch.testing.assert_close(pipe.scheduler.timesteps, expected_t)


def test_the_same_input_gives_the_same_pixels_on_every_plan(tiny_engine, tiny_settings, source):
    spec = with_image(SPEC, source, 0.6)
    expected = pixels(tiny_engine.generate(spec))
    for changes in (dict(profile="streamed"), dict(profile="streamed", ram_budget_gib=0.01)):
        engine = Engine.load(replace(tiny_settings, **changes), "cpu")
        try:
            assert np.array_equal(pixels(engine.generate(spec)), expected), changes
        finally:
            engine.close()


def test_upscale_refines_a_result_at_twice_its_size(tiny_engine, tmp_path):
    # 1. A result, saved as the bot saves it.
    parent = tiny_engine.generate(SPEC)
    path = tmp_path / "parent.png"
    sha = save_png(parent.images[0], path, image_params(parent, 0))
    # 2. Its upscale: ×2, the parent's prompt and seed, a modest strength.
    width, height = upscale_size(SPEC.width, SPEC.height)
    up = replace(SPEC, width=width, height=height, image=str(path), image_sha256=sha, denoise=UPSCALE_DENOISE,
                 upscale_parent="job 7 image 1")
    result = tiny_engine.generate(up)
    assert result.images[0].size == (512, 512) and result.steps_done == img2img_steps(4, UPSCALE_DENOISE)[1]
    # 3. Its PNG says what it was made from, as A1111 does.
    out = tmp_path / "up.png"
    save_png(result.images[0], out, image_params(result, 0))
    params = read_png_params(out)
    assert (params["denoise"], params["image_sha256"], params["upscale_parent"]) == (UPSCALE_DENOISE, sha, "job 7 image 1")
    text = format_parameters(params)
    assert f"Denoising strength: {UPSCALE_DENOISE}, Init image hash: {sha}, Upscale parent: job 7 image 1" in text


def test_a_changed_or_missing_input_image_is_refused(tiny_engine, source, tmp_path):
    path = tmp_path / "copy.png"
    path.write_bytes(source[0].read_bytes())
    spec = replace(SPEC, image=str(path), image_sha256=source[1], denoise=0.6)
    tiny_engine.generate(spec)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(EngineError, match="has changed since the job was made"):
        tiny_engine.generate(spec)
    path.unlink()
    with pytest.raises(EngineError, match="is gone"):
        tiny_engine.generate(spec)


def test_a_bad_strength_is_refused(tiny_engine, source):
    with pytest.raises(EngineError, match="Image strength must be between 0"):
        tiny_engine.generate(with_image(SPEC, source, 1.5))
