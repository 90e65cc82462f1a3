"""PNG metadata: A1111 `parameters` text and a `fluxbot` JSON chunk that reads back exactly."""
from __future__ import annotations

from PIL import Image

from engine.png import format_parameters, image_params, read_png_params, save_png
from engine.spec import JobSpec


def test_png_round_trips_the_recipe(tiny_engine, tmp_path):
    spec = JobSpec("a cat, «on» the moon 🌙", seed=7, steps=2, width=256, height=256, count=2,
                   variation_seed=40, variation_strength=0.25)
    result = tiny_engine.generate(spec)
    path = tmp_path / "sub" / "cat.png"
    digest = save_png(result.images[1], path, image_params(result, 1))
    assert len(digest) == 64 and not list(path.parent.glob(".*tmp"))
    params = read_png_params(path)
    assert params["prompt"] == spec.prompt and params["seed"] == 8 and params["variation_seed"] == 41
    assert params["variation_strength"] == 0.25 and params["model_id"] == result.model_id
    assert (params["width"], params["height"], params["steps"], params["guidance"]) == (256, 256, 2, 3.5)
    with Image.open(path) as im:
        text = im.text["parameters"]
        assert im.size == (256, 256)
    name, digest12 = result.model_id.split("@")
    assert text == (f"{spec.prompt}\nSteps: 2, Sampler: Euler (flow match), CFG scale: 1, Distilled CFG Scale: 3.5, "
                    f"Seed: 8, Size: 256x256, Model hash: {digest12}, Model: {name}, Variation seed: 41, "
                    f"Variation seed strength: 0.25")


def test_parameters_without_variation_have_no_variation_fields():
    text = format_parameters({"prompt": "a dog", "steps": 20, "guidance": 3.5, "seed": 1, "width": 1024,
                              "height": 768, "model_id": "majicflus_v134@0123456789ab", "variation_seed": None})
    assert text == ("a dog\nSteps: 20, Sampler: Euler (flow match), CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 1, "
                    "Size: 1024x768, Model hash: 0123456789ab, Model: majicflus_v134")


def test_plain_a1111_png_gives_its_parameters_text(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "a dog\nSteps: 20")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png", pnginfo=info)
    assert read_png_params(tmp_path / "a.png") == {"parameters": "a dog\nSteps: 20"}
