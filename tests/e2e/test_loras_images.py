"""LoRAs, an image as input, 🔍 Upscale ×2 and Vary Subtle/Strong through the real bot and the fake Discord (issue 15):
each new option, button and refusal, with what the job records and what its PNG says. The jobs the engine runs (a
LoRA, an image to start from, Upscale, Vary) run on both `[engine] backend`s (tests/support/backends.py)."""
from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

from bot.app import build_bot
from db import jobs as store_jobs
from engine.image_input import DEFAULT_DENOISE, UPSCALE_DENOISE, fit_size
from engine.png import format_parameters, read_png_params
from engine.settings import TINY, EngineSettings
from engine.tiny import DEMO_LORA
from tests.e2e.refusals import refusal
from tests.e2e.reliability_kit import (count_rows, crafted_click, has_result, imagine, rel_config,  # noqa: F401
                                       job_buttons)
from tests.fakediscord import Upload
from tests.support import lora_layouts
from tests.support.backends import backend, on_both_backends  # noqa: F401 (backend: a fixture)
from tests.support.configs import SIZES

LARGE = "2:3 1024x1536"   # a size past Upscale ×2's 1024² (engine.image_input.UPSCALE_MAX_PIXELS)


@pytest.fixture(scope="module")
def loras_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("loras")


@pytest.fixture(scope="module")
def lora_engine(tiny_model_dir, loras_dir):
    """A tiny-random engine of this module's own, its LoRAs in `loras_dir` (the demo LoRA is written at load)."""
    from engine.pipeline import Engine

    settings = EngineSettings(model=TINY, models_dir=str(tiny_model_dir.parent), profile="resident", devices=["cpu"],
                              default_steps=2, max_sequence_length=64, loras_dir=str(loras_dir))
    engine = Engine.load(settings, "cpu")
    lora_layouts.write(engine.pipe, "peft", loras_dir / "e2e detail.safetensors")
    yield engine
    engine.close()


@pytest.fixture
async def bot(fake_discord, start_bot, rel_config, lora_engine, loras_dir, backend):
    config = rel_config(engine={"loras_dir": str(loras_dir)}, limits={"max_loras": 2, "max_input_mb": 1.0},
                        discord={"sizes": [*SIZES, LARGE]})
    loader = await backend.loader(lora_engine)
    started = await start_bot(await build_bot(backend.configure(config), engine_loader=loader, close_engines=False))
    assert await started.engines.wait_loaded() == 1 and backend.serves(started)
    return started


async def result_of(ix, timeout: float = 60.0):
    return await ix.wait_message(has_result, timeout)


def png_params(bot, job) -> dict:
    return read_png_params(job.images[0].path)


def decoded(attachment) -> np.ndarray:
    with Image.open(io.BytesIO(attachment.data)) as im:
        return np.asarray(im.convert("RGB"))


def photo(width=300, height=200, **text) -> bytes:
    """A PNG 'photo' with text chunks (metadata a user would not want kept)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 120)], axis=-1).astype(np.uint8)
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


# --- LoRAs --------------------------------------------------------------------------------------------------------

@on_both_backends
async def test_a_lora_option_and_a_prompt_tag_make_the_job_and_its_png_record_them(fake_discord, bot, loras_dir):
    fake = fake_discord
    alice = fake.add_user("alice")
    ix = await imagine(fake, alice, prompt="a red fox <lora:e2e detail:0.5> in snow", seed=5, lora=DEMO_LORA,
                       lora_strength=0.8)
    await result_of(ix)
    job = await store_jobs.get_job(bot.store, 1)
    # 1. The record: the prompt without its tag, both LoRAs with their files' SHA-256 and strengths.
    digest = {p.stem: hashlib.sha256(p.read_bytes()).hexdigest() for p in loras_dir.glob("*.safetensors")}
    assert job.prompt == "a red fox in snow"
    assert job.loras == ({"name": "e2e detail", "strength": 0.5, "sha256": digest["e2e detail"]},
                         {"name": DEMO_LORA, "strength": 0.8, "sha256": digest[DEMO_LORA]})
    # 2. The PNG, in A1111's words.
    text = format_parameters(png_params(bot, job))
    assert text.startswith(f"a red fox in snow <lora:e2e detail:0.5> <lora:{DEMO_LORA}:0.8>\n")
    assert 'Lora hashes: "e2e detail: ' in text
    # 3. 🎲 Reroll keeps them.
    await result_of(await fake.click(alice, (await ix.wait_message(has_result)), "Reroll"))
    assert (await store_jobs.get_job(bot.store, 2)).loras == job.loras


async def test_the_lora_option_autocompletes_installed_names(fake_discord, bot):
    alice = fake_discord.add_user("alice")
    ix = await fake_discord.autocomplete(alice, "imagine", {"prompt": "a cat", "lora": "DET"}, focused="lora")
    response = await ix.wait_response()
    assert response.type == 8 and [c["name"] for c in response.data["choices"]] == ["e2e detail"]
    ix = await fake_discord.autocomplete(alice, "imagine", {"prompt": "a cat", "lora": ""}, focused="lora")
    assert [c["value"] for c in (await ix.wait_response()).data["choices"]] == ["e2e detail", DEMO_LORA]


async def test_slash_loras_lists_names_and_trigger_words(fake_discord, bot):
    alice = fake_discord.add_user("alice")
    ix = await fake_discord.slash(alice, "loras", {})
    response = await ix.wait_response()
    text = response.data.get("content", "") + str(response.data.get("embeds", ""))
    shown = DEMO_LORA.replace("-", "\\-")                  # as Discord markdown: the name, escaped (bot.literal)
    assert response.ephemeral and f"**{shown}** (" in text and "trigger words: tiny demo" in text
    assert "**e2e detail** (" in text and text.startswith("2 LoRAs")


@pytest.mark.parametrize("options, words", [
    (dict(prompt="a cat", lora="no such lora"), "There is no LoRA named 'no such lora'"),
    (dict(prompt="a cat <lora:e2e detail:9>"), "LoRA strength must be between -2 and 2"),
    (dict(prompt="a cat", lora_strength=0.5), "lora_strength needs a lora"),
    (dict(prompt="a <lora:e2e detail> <lora:x:1> <lora:y:1> cat"), "at most 2 LoRAs"),
    (dict(prompt="a cat", lora="sdxl style"), "not a LoRA for FLUX"),
    (dict(prompt="<lora:e2e detail>"), "The prompt is empty"),
])
async def test_bad_lora_requests_are_refused_privately_and_queue_nothing(fake_discord, bot, loras_dir, options, words):
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(2, 8),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.ones(8, 2)},
              str(loras_dir / "sdxl style.safetensors"))
    try:
        alice = fake_discord.add_user("alice")
        ix = await fake_discord.slash(alice, "imagine", {"steps": 2, "size": "256x256", **options})
        assert words in await refusal(fake_discord, ix)
        assert await count_rows(bot.store) == 0
    finally:
        (loras_dir / "sdxl style.safetensors").unlink()


@pytest.mark.parametrize("options", [dict(lora="wide style"), dict(prompt="a cat <lora:wide style:0.7>")])
async def test_a_lora_of_other_widths_is_refused_at_admission_naming_the_file_and_what_does_not_fit(
        fake_discord, bot, loras_dir, lora_engine, options):
    """A FLUX LoRA trained for other widths (its layer names are FLUX's own) is refused from its header before
    anything is queued, with the words the engine would have used when the job ran (engine/lora_shapes.py)."""
    path = lora_layouts.write(lora_engine.pipe, "other_widths", loras_dir / "wide style.safetensors")
    try:
        alice = fake_discord.add_user("alice")
        ix = await fake_discord.slash(alice, "imagine", {"prompt": "a cat", "steps": 2, "size": "256x256", **options})
        text = await refusal(fake_discord, ix)
        assert "wide style.safetensors was made for a FLUX model of other widths" in text
        assert "has 144 outputs, this model's has 96" in text
        assert await count_rows(bot.store) == 0
        # the lora option's autocomplete says so too (the same verdict, read once per file)
        ix = await fake_discord.autocomplete(alice, "imagine", {"prompt": "a cat", "lora": ""}, focused="lora")
        choices = {c["value"]: c["name"] for c in (await ix.wait_response()).data["choices"]}
        assert choices == {"e2e detail": "e2e detail", DEMO_LORA: DEMO_LORA,
                           "wide style": "wide style (not usable with this model)"}
    finally:
        path.unlink()


async def test_loras_needing_more_gpu_memory_than_the_plans_keep_are_refused_at_admission(
        fake_discord, start_bot, rel_config, lora_engine, loras_dir):
    """[engine] lora_reserve_rank = 4: room for rank 4 on every layer of tiny-random; one rank-4 LoRA runs, two are
    refused privately before anything is queued, saying what they need and what the bot keeps."""
    config = rel_config(engine={"loras_dir": str(loras_dir), "lora_reserve_rank": 4}, limits={"max_loras": 2})
    bot = await start_bot(await build_bot(config, engine_loader=lambda _s, _d: lora_engine, close_engines=False))
    assert await bot.engines.wait_loaded() == 1
    alice = fake_discord.add_user("alice")
    ix = await fake_discord.slash(alice, "imagine", {"prompt": "a cat <lora:e2e detail:0.5>", "lora": DEMO_LORA,
                                                     "steps": 2, "size": "256x256"})
    text = await refusal(fake_discord, ix)
    assert text.startswith("These 2 LoRAs need 35 KiB of GPU memory; this bot keeps 33 KiB for a job's LoRAs")
    assert await count_rows(bot.store) == 0
    await result_of(await imagine(fake_discord, alice, prompt="a cat", seed=2, lora=DEMO_LORA))
    assert await count_rows(bot.store) == 1


async def test_show_refuses_a_job_whose_lora_file_changed_or_is_gone(fake_discord, bot, loras_dir, lora_engine):
    fake = fake_discord
    alice = fake.add_user("alice")
    path = lora_layouts.write(lora_engine.pipe, "kohya", loras_dir / "e2e changing.safetensors")
    try:
        await result_of(await imagine(fake, alice, prompt="a barn", seed=3, lora="e2e changing"))
        job = await store_jobs.get_job(bot.store, 1)
        for image in job.images:                          # the PNG was pruned: /show must make it again
            os.remove(image.path)
        lora_layouts.write(lora_engine.pipe, "comfy", path)   # same name, another file
        ix = await fake.slash(alice, "show", {"job": 1})
        assert "has changed since this job was made" in await refusal(fake, ix)
        path.unlink()
        ix = await fake.slash(alice, "show", {"job": 1})
        assert "is no longer installed" in await refusal(fake, ix)
        assert await count_rows(bot.store) == 1
    finally:
        path.unlink(missing_ok=True)


async def test_edit_keeps_the_parents_loras_and_a_tag_in_the_new_prompt_replaces_them(fake_discord, bot, loras_dir):
    """✏️ Edit without <lora:…> tags keeps the parent's LoRAs (names, file hashes, strengths); a tag in the edited
    prompt chooses the LoRAs instead, and the tag leaves the prompt."""
    fake = fake_discord
    alice = fake.add_user("alice")
    first = await result_of(await imagine(fake, alice, prompt="a lighthouse <lora:e2e detail:0.5>", seed=4,
                                          lora=DEMO_LORA, lora_strength=0.8))
    parent = await store_jobs.get_job(bot.store, 1)
    assert [u["name"] for u in parent.loras] == ["e2e detail", DEMO_LORA]

    async def edit(prompt: str):
        opened = await (await fake.click(alice, first, "Edit")).wait_response()
        assert opened.type == 9, opened.data
        await result_of(await fake.submit_modal(alice, opened.modal_custom_id,
                                                {"prompt": prompt, "seed": "9", "steps": "2"}, message=first))
    # 1. No tag: the parent's LoRAs, as recorded (the same files, the same strengths).
    await edit("a lighthouse at night")
    kept = await store_jobs.get_job(bot.store, 2)
    assert (kept.kind, kept.prompt, kept.loras) == ("edit", "a lighthouse at night", parent.loras)
    assert f"<lora:{DEMO_LORA}:0.8>" in format_parameters(png_params(bot, kept))
    # 2. A tag: those LoRAs only.
    await edit("a lighthouse in fog <lora:e2e detail:0.3>")
    replaced = await store_jobs.get_job(bot.store, 3)
    digest = hashlib.sha256((loras_dir / "e2e detail.safetensors").read_bytes()).hexdigest()
    assert replaced.prompt == "a lighthouse in fog"
    assert replaced.loras == ({"name": "e2e detail", "strength": 0.3, "sha256": digest},)


async def test_show_makes_a_pruned_lora_job_again_with_its_loras_and_the_same_pixels(fake_discord, bot):
    fake = fake_discord
    alice = fake.add_user("alice")
    original = await result_of(await imagine(fake, alice, prompt="a windmill", seed=13, lora=DEMO_LORA,
                                             lora_strength=0.9))
    plain = await result_of(await imagine(fake, alice, prompt="a windmill", seed=13))
    assert not np.array_equal(decoded(original.attachments[0]), decoded(plain.attachments[0]))   # the LoRA shows
    job = await store_jobs.get_job(bot.store, 1)
    for image in job.images:                                  # pruned: /show makes it again from the record
        os.remove(image.path)
    again = await result_of(await fake.slash(alice, "show", {"job": 1}))
    shown = await store_jobs.get_job(bot.store, 3)
    assert (shown.kind, shown.parent_id, shown.loras) == ("show", 1, job.loras)
    assert np.array_equal(decoded(again.attachments[0]), decoded(original.attachments[0]))


async def test_defaults_a_lora_without_lora_strength_is_1_and_an_image_without_strength_is_0_6(fake_discord, bot,
                                                                                               loras_dir):
    fake = fake_discord
    alice = fake.add_user("alice")
    upload = Upload("field.png", photo(256, 256), "image/png")
    await result_of(await fake.slash(alice, "imagine", {"prompt": "a field", "lora": DEMO_LORA, "image": upload,
                                                        "steps": 2, "seed": 6}))
    job = await store_jobs.get_job(bot.store, 1)
    digest = hashlib.sha256((loras_dir / f"{DEMO_LORA}.safetensors").read_bytes()).hexdigest()
    assert job.loras == ({"name": DEMO_LORA, "strength": 1.0, "sha256": digest},)
    assert DEFAULT_DENOISE == 0.6 and job.denoise == 0.6
    params = format_parameters(png_params(bot, job))
    assert params.startswith(f"a field <lora:{DEMO_LORA}:1>\n") and "Denoising strength: 0.6," in params


# --- an image as input ---------------------------------------------------------------------------------------------

@on_both_backends
async def test_an_image_attachment_is_stored_clean_and_drives_the_job(fake_discord, bot):
    fake = fake_discord
    alice = fake.add_user("alice")
    upload = Upload("holiday.png", photo(parameters="secret prompt", Author="alice@example.com"), "image/png")
    ix = await fake.slash(alice, "imagine", {"prompt": "an oil painting", "image": upload, "strength": 0.5,
                                             "steps": 4, "seed": 8})
    result = await result_of(ix)
    job = await store_jobs.get_job(bot.store, 1)
    # 1. The size is the image's (aspect kept, multiples of 16); the strength and the stored input are recorded.
    assert (job.width, job.height) == fit_size(300, 200) and result.attachments[0].image_size == fit_size(300, 200)
    stored = open(job.input_image, "rb").read()
    assert job.denoise == 0.5 and job.input_sha256 == hashlib.sha256(stored).hexdigest()
    assert b"secret prompt" not in stored and b"alice@example.com" not in stored     # only the pixels were kept
    # 2. The PNG says so, in A1111's words.
    assert f"Denoising strength: 0.5, Init image hash: {job.input_sha256}" in format_parameters(png_params(bot, job))
    # 3. Reroll keeps the input and its strength.
    await result_of(await fake.click(alice, result, "Reroll"))
    again = await store_jobs.get_job(bot.store, 2)
    assert (again.input_image, again.input_sha256, again.denoise) == (job.input_image, job.input_sha256, 0.5)


@pytest.mark.parametrize("upload, words", [
    (Upload("big.png", b"\x89PNG" + b"\0" * 1_200_000, "image/png"), "accepts at most 1 MB"),
    (Upload("notes.txt", b"hello", "text/plain"), "not an image"),
    (Upload("broken.png", b"\x89PNG\r\n\x1a\n garbage", "image/png"), "could not be read as an image"),
])
async def test_bad_attachments_are_refused_privately_and_queue_nothing(fake_discord, bot, upload, words):
    fake = fake_discord
    alice = fake.add_user("alice")
    ix = await fake.slash(alice, "imagine", {"prompt": "a cat", "image": upload, "steps": 2})
    assert words in await refusal(fake, ix)
    assert await count_rows(bot.store) == 0
    if "MB" in words:                                  # refused on its declared size: never downloaded
        assert not fake.requests_to(r"^/attachments/", "GET")


@pytest.mark.parametrize("status, words", [
    (404, "(HTTP 404: the attachment is gone or its link expired). Attach it again"),
    (403, "(HTTP 403: the attachment is gone or its link expired). Attach it again"),
    (503, "(HTTP 503). Attach it again and send the command again in a moment."),
])
async def test_an_attachment_discord_cannot_serve_is_refused_privately_saying_to_attach_it_again(
        fake_discord, bot, tmp_path, status, words):
    """The CDN answers an error (an expired link, a removed file, an outage): the user is told what failed and what
    to do, privately, not "something went wrong"; nothing is queued or stored."""
    fake = fake_discord
    alice = fake.add_user("alice")
    fake.fail(r"^/attachments/", status, method="GET")
    ix = await fake.slash(alice, "imagine", {"prompt": "a cat", "image": Upload("cat.png", photo(), "image/png"),
                                             "steps": 2})
    text = await refusal(fake, ix)
    assert text.startswith("The image could not be downloaded from Discord") and words in text
    assert await count_rows(bot.store) == 0 and fake.requests_to(r"^/attachments/", "GET")
    assert not list((tmp_path / "images" / "inputs").glob("*.png"))     # nothing stored (rel_config's images_dir)


async def test_an_attachment_larger_than_it_declared_is_refused_and_queues_nothing(fake_discord, bot):
    """Its payload says 50 KB, the CDN sends 3 MB: the download stops past [limits] max_input_mb (1 MB here)."""
    fake = fake_discord
    alice = fake.add_user("alice")
    liar = Upload("small.png", b"\x89PNG\r\n\x1a\n" + os.urandom(3 * 2**20), "image/png", declared_size=50_000)
    ix = await fake.slash(alice, "imagine", {"prompt": "a cat", "image": liar, "steps": 2})
    text = await refusal(fake, ix)
    assert text == ("The image is larger than its attachment said: this bot accepts at most 1 MB. Send a smaller "
                    "image.")
    assert await count_rows(bot.store) == 0 and fake.requests_to(r"^/attachments/", "GET")


async def test_strength_without_an_image_is_refused(fake_discord, bot):
    alice = fake_discord.add_user("alice")
    ix = await fake_discord.slash(alice, "imagine", {"prompt": "a cat", "strength": 0.5, "steps": 2})
    assert "strength needs an image" in await refusal(fake_discord, ix)


# --- buttons: Upscale, Vary Subtle/Strong ----------------------------------------------------------------------------

@on_both_backends
async def test_upscale_makes_a_twice_as_large_refinement_of_the_image(fake_discord, bot):
    fake = fake_discord
    alice = fake.add_user("alice")
    first = await result_of(await imagine(fake, alice, prompt="a castle", seed=11, lora=DEMO_LORA))
    parent = await store_jobs.get_job(bot.store, 1)
    up = await result_of(await fake.click(alice, first, "Upscale ×2"))
    job = await store_jobs.get_job(bot.store, 2)
    assert (job.kind, job.parent_id, job.width, job.height, job.denoise) == ("upscale", 1, 512, 512, UPSCALE_DENOISE)
    assert (job.prompt, job.seed, job.loras) == (parent.prompt, parent.seed, parent.loras)
    assert up.attachments[0].image_size == (512, 512)
    params = format_parameters(png_params(bot, job))
    assert "Upscale parent: job 1" in params and f"Denoising strength: {UPSCALE_DENOISE}" in params
    # its input is the parent's pixels, stored clean
    with Image.open(job.input_image) as im, Image.open(parent.images[0].path) as original:
        assert np.array_equal(np.asarray(im), np.asarray(original.convert("RGB")))


async def test_a_result_larger_than_1024_squared_has_no_upscale_button_and_a_crafted_click_is_refused(fake_discord,
                                                                                                      bot):
    """Upscale ×2 is for results of at most 1024² (×2 → 2048 a side at most): a 1024×1536 result has every other
    button, and a click on an upscale custom_id made for it (an old or forged button) is refused privately, saying
    why, and queues nothing."""
    fake = fake_discord
    alice = fake.add_user("alice")
    big = await result_of(await imagine(fake, alice, prompt="a tower", seed=3, size="1024x1536", steps=1), 120)
    assert big.attachments[0].image_size == (1024, 1536)
    assert big.custom_ids == job_buttons(bot, 1, ("reroll", "vary", "varystrong", "edit", "delete"))
    ix = await crafted_click(fake, alice, job_buttons(bot, 1, ("upscale",))[0])
    assert await refusal(fake, ix) == ("Job #1 is 1024×1536: Upscale ×2 takes images of at most 1024×1024 (the "
                                       "result is at most 2048 a side).")
    assert await count_rows(bot.store) == 1


@on_both_backends
async def test_vary_subtle_and_strong_and_the_old_vary_button(fake_discord, bot):
    from bot.job_types import VARY_STRENGTH, VARY_STRONG

    fake = fake_discord
    alice = fake.add_user("alice")
    first = await result_of(await imagine(fake, alice, prompt="a harbour", seed=21))
    await result_of(await fake.click(alice, first, "Vary (Subtle)"))
    await result_of(await fake.click(alice, first, "Vary (Strong)"))
    old = await crafted_click(fake, alice, job_buttons(bot, 1, ("vary",))[0])   # a button posted before Strong existed
    await result_of(old)
    strengths = [(await store_jobs.get_job(bot.store, i)).variation_strength for i in (2, 3, 4)]
    assert strengths == [VARY_STRENGTH, VARY_STRONG, VARY_STRENGTH] and VARY_STRONG > VARY_STRENGTH
