"""The web console through its API (gradio_client against a running server, the tiny model on the CPU): a request is
an ordinary job in the database, the PNG it serves carries its recipe, the buttons make the jobs Discord's make,
and bad input is refused with the bot's own words, queueing nothing."""
from __future__ import annotations

import hashlib
import re

import pytest
from PIL import Image

from bot.job_types import NewRequest
from bot.web.jobs import LOCAL_USER, web_user_id
from db import jobs as store_jobs
from db.models import WEB
from engine.image_input import fit_size
from engine.spec import JobSpec
from tests.support.web_console import RunningConsole, form

gradio_client = pytest.importorskip("gradio_client")
httpx = pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def console(tmp_path_factory, tiny_model_dir):
    running = RunningConsole(tmp_path_factory.mktemp("web"), tiny_model_dir.parent).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(console, tmp_path_factory):
    return gradio_client.Client(console.url, verbose=False, download_files=str(tmp_path_factory.mktemp("dl")))


def generate(client, prompt="a lighthouse at dusk", seed=7, **fields):
    status, image, job_id, used_seed, parameters, download, gallery = client.predict(
        *form(prompt, seed, **fields), api_name="/generate")
    return dict(status=status, image=image, job_id=int(job_id), seed=int(used_seed), parameters=parameters,
                download=download, gallery=gallery)


def png_text(path) -> str:
    with Image.open(path) as im:
        return im.text["parameters"]


def pixels(path) -> bytes:
    with Image.open(path) as im:
        return hashlib.sha256(im.convert("RGB").tobytes()).digest()


def jobs_count(console) -> int:
    return console.call(store_jobs.count_unfinished(console.store)) + len(
        console.call(store_jobs.user_history(console.store, web_user_id(LOCAL_USER), per_page=100)).items)


def test_generate_is_an_ordinary_job_whose_png_keeps_its_recipe(console, client):
    out = generate(client, seed=7)
    # 1. what the page shows: done, the seed used, the PNG's own parameters
    assert out["status"].startswith(f"Job #{out['job_id']} done")
    assert out["seed"] == 7
    assert out["parameters"].startswith("a lighthouse at dusk\nSteps: 2") and "Seed: 7" in out["parameters"]
    # 2. the served PNG is the saved file, metadata included
    row = console.call(store_jobs.get_job(console.store, out["job_id"]))
    with open(out["image"], "rb") as served, open(row.images[0].path, "rb") as saved:
        assert served.read() == saved.read()
    assert png_text(out["image"]) == out["parameters"]
    # 3. the row: a web job of the login 'local', with the spec asked for
    assert (row.source, row.user_name, row.user_id, row.kind) == (WEB, LOCAL_USER, web_user_id(LOCAL_USER),
                                                                  "imagine")
    assert (row.status, row.seed, row.steps, row.width, row.height, row.guidance) == ("done", 7, 2, 256, 256, 3.5)
    # 4. the history gallery lists it, newest first
    assert out["gallery"][0]["caption"].startswith(f"#{out['job_id']} · seed 7 · a lighthouse")



def test_seed_minus_one_is_random_and_the_used_seed_is_shown(console, client):
    out = generate(client, seed=-1, size="256x320")
    row = console.call(store_jobs.get_job(console.store, out["job_id"]))
    assert out["seed"] == row.seed >= 0 and f"Seed: {row.seed}," in png_text(out["image"])
    assert Image.open(out["image"]).size == (256, 320)


@pytest.mark.parametrize("field, value, message", [
    ("prompt", "   ", "The prompt is empty"),
    ("prompt", "a forbidden word", "does not accept ('forbidden')"),
    ("steps", 0, "Value 0 is less than minimum value 1"),  # Gradio checks its sliders and choices itself
    ("steps", 2.5, "Steps must be a whole number"),
    ("seed", 2 ** 32, "is out of range"),
    ("seed", 1.5, "Seed must be a whole number"),
    ("guidance", 11, "Value 11 is greater than maximum value 10"),
    ("size", "999x999", "Value: 999x999 is not in the list of choices"),
])
def test_bad_input_is_refused_with_the_bots_words_and_queues_nothing(console, client, field, value, message):
    before = jobs_count(console)
    with pytest.raises(gradio_client.exceptions.AppError, match=re.escape(message)):
        generate(client, **{field: value})
    assert jobs_count(console) == before


def test_reroll_vary_and_reproduce_make_the_jobs_discords_buttons_make(console, client):
    first = generate(client, seed=11)
    # 🎲 Reroll: same request, a new seed
    status, image, job_id, seed, *_ = client.predict(first["job_id"], api_name="/reroll")
    reroll = console.call(store_jobs.get_job(console.store, int(job_id)))
    assert (reroll.kind, reroll.parent_id, reroll.prompt) == ("reroll", first["job_id"], "a lighthouse at dusk")
    assert int(seed) == reroll.seed
    # 🔀 Vary: the parent's seed and a variation seed
    *_, = client.predict(first["job_id"], api_name="/vary")
    vary = console.call(store_jobs.user_history(console.store, web_user_id(LOCAL_USER), per_page=1)).items[0]
    assert (vary.kind, vary.seed, vary.parent_id) == ("vary", 11, first["job_id"])
    assert vary.variation_seed is not None and vary.variation_strength > 0
    # Reproduce: the same pixels
    status, image, job_id, seed, *_ = client.predict(first["job_id"], api_name="/reproduce")
    again = console.call(store_jobs.get_job(console.store, int(job_id)))
    assert (again.kind, again.seed, again.parent_id) == ("show", 11, first["job_id"])
    assert pixels(image) == pixels(first["image"])


def test_another_users_job_is_not_reachable_from_the_console(console, client):
    # a Discord user's job in the same database
    submitted = console.call(console.service.submit(NewRequest(
        user_id=424242, spec=JobSpec("a private discord prompt", seed=5, steps=1, width=256, height=256),
        guild_id=1, channel_id=2)))
    with pytest.raises(gradio_client.exceptions.AppError, match=f"Job #{submitted.job_id} is not one of this "
                                                                "console's jobs"):
        client.predict(submitted.job_id, api_name="/reroll")
    with pytest.raises(gradio_client.exceptions.AppError, match="No job chosen: generate one first, or pick one"):
        client.predict(0, api_name="/reproduce")  # nothing picked in the history
    gallery = client.predict(api_name="/history")
    assert all("private discord" not in item["caption"] for item in gallery)


def test_uploads_are_capped_like_a_discord_attachment(console):
    # Gradio's upload route is open to every visitor: it takes [limits] max_input_mb (8 MB), no more
    limit = console.config.limits.max_input_mb * 2**20
    small = httpx.post(f"{console.url}gradio_api/upload", files={"files": ("a.png", b"x" * 1000)})
    large = httpx.post(f"{console.url}gradio_api/upload", files={"files": ("b.png", b"x" * int(limit + 1))})
    assert small.status_code == 200 and large.status_code == 413, (small.status_code, large.status_code)


def test_a_lora_and_an_image_to_start_from_as_on_discord(console, client, tmp_path):
    # 1. tiny-random's demo LoRA, named by a prompt tag: the job records it, the PNG says it, the tag leaves the prompt
    out = generate(client, prompt="a fox <lora:tiny-random-demo:0.8>", seed=3)
    row = console.call(store_jobs.get_job(console.store, out["job_id"]))
    assert row.prompt == "a fox" and [(u["name"], u["strength"]) for u in row.loras] == [("tiny-random-demo", 0.8)]
    assert "<lora:tiny-random-demo:0.8>" in out["parameters"] and "Lora hashes:" in out["parameters"]
    # 2. the LoRA field does the same; an unknown LoRA is refused, queueing nothing
    by_field = generate(client, prompt="a fox", seed=3, lora="tiny-random-demo", lora_strength=0.8)
    assert pixels(by_field["image"]) == pixels(out["image"])
    before = jobs_count(console)
    with pytest.raises(gradio_client.exceptions.AppError, match="There is no LoRA named 'nope'"):
        generate(client, prompt="a fox <lora:nope:1>")
    assert jobs_count(console) == before
    # 3. an image to start from: stored like a Discord attachment, the job at its aspect and strength
    start = tmp_path / "start.png"
    Image.new("RGB", (320, 240), "red").save(start)
    out = generate(client, seed=4, image=gradio_client.handle_file(str(start)), denoise=0.5)
    row = console.call(store_jobs.get_job(console.store, out["job_id"]))
    assert (row.width, row.height, row.denoise) == (*fit_size(320, 240), 0.5) and row.input_sha256
    assert "Denoising strength: 0.5" in out["parameters"]
