"""`python -m bot generate …` end to end through bot.cli.main on the tiny model."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bot.cli import main
from engine.png import read_png_params


@pytest.fixture
def config_file(tiny_model_dir, tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(f'[engine]\nmodel = "tiny-random"\nmodels_dir = "{tiny_model_dir.parent}"\n'
                    f'images_dir = "{tmp_path / "images"}"\ndevices = ["cpu"]\n[logging]\nfile = ""\n')
    return path


def test_generate_writes_pngs_and_prints_seeds_timings_and_paths(config_file, tmp_path, capsys):
    out = tmp_path / "cat.png"
    rc = main(["--config", str(config_file), "generate", "a cat", "--seed", "7", "--steps", "2", "--size", "256x320",
               "--count", "2", "-o", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    first, second = tmp_path / "cat_1.png", tmp_path / "cat_2.png"
    assert "seeds: 7, 8" in printed.out and "s/step" in printed.out
    assert f"saved {first}" in printed.out and f"saved {second}" in printed.out
    assert "denoising" in printed.err  # the tqdm bar
    # the phases in order: prompt, the bar over the steps, then the decode as its own line
    err = printed.err
    assert err.index("encoding the prompt") < err.index("denoising") < err.index("decoding 2 images")
    assert "denoise" in printed.out and "s/step over 2 steps" in printed.out and "decode" in printed.out
    assert printed.out.count("images are noise") == 1  # said once: tiny-random makes noise
    with Image.open(first) as im:
        assert im.size == (256, 320)
    params = read_png_params(second)
    assert params["seed"] == 8 and params["steps"] == 2 and params["prompt"] == "a cat"
    assert params["model_id"].startswith("tiny-random@")


def test_same_seed_from_the_cli_gives_the_same_png_pixels(config_file, tmp_path, capsys):
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for p in paths:
        assert main(["--config", str(config_file), "generate", "a dog", "--seed", "3", "--steps", "1", "--size",
                     "256x256", "-o", str(p)]) == 0
    a, b = (np.asarray(Image.open(p)) for p in paths)
    assert np.array_equal(a, b)


def test_random_seed_is_printed_and_default_path_is_the_images_folder(config_file, tmp_path, capsys):
    assert main(["--config", str(config_file), "generate", "a tree", "--steps", "1", "--size", "256x256"]) == 0
    out = capsys.readouterr().out
    seed = int(out.split("seed: ")[1].split()[0])
    saved = list((tmp_path / "images").glob("*.png"))
    assert len(saved) == 1 and saved[0].name.endswith(f"-{seed}.png") and read_png_params(saved[0])["seed"] == seed


@pytest.mark.parametrize("args, words", [(["--size", "1000x1024"], "multiple of 16"),
                                         (["--size", "128x128"], "from 256 to 2048"),
                                         (["--size", "big"], "WIDTHxHEIGHT"),
                                         (["--steps", "60"], "Steps must be between 1 and 50, not 60"),
                                         (["--guidance", "0"], "Guidance must be between 1 and 10"),
                                         (["--count", "5"], "Count must be between 1 and 4"),
                                         (["--variation-strength", "0.5"], "needs a variation seed"),
                                         # what the bot refuses, the CLI refuses with the same words
                                         (["--seed", str(2**32)], "Seed 4294967296 is out of range"),
                                         (["--seed", "-5"], "Seed -5 is out of range"),
                                         (["--count", "4", "--steps", "50", "--size", "2048x2048"],
                                          "= 800; this bot allows at most 200 per job. Ask for fewer images")])
def test_bad_arguments_exit_2_with_a_clear_error_before_loading(config_file, capsys, args, words):
    rc = main(["--config", str(config_file), "generate", "a cat", *args])
    assert rc == 2 and words in capsys.readouterr().err


def test_missing_model_exits_1_and_says_how_to_download(config_file, tmp_path, capsys):
    rc = main(["--config", str(config_file), "generate", "a cat", "--steps", "1", "--size", "256x256",
               "--model", str(tmp_path / "nothing-here")])
    assert rc == 1 and "python -m bot download" in capsys.readouterr().err


@pytest.mark.parametrize("prompt, words", [("x" * 10_000, "10000 characters long; the limit is 1000"),
                                           ("\u200b\u3164\u2800 \U000e0041\ufe0f", "The prompt is empty"),
                                           ("", "The prompt is empty")])
def test_prompt_is_checked_with_the_bots_limit_and_wording(config_file, capsys, prompt, words):
    rc = main(["--config", str(config_file), "generate", prompt, "--steps", "1", "--size", "256x256"])
    err = capsys.readouterr().err
    assert rc == 2 and words in err and "Traceback" not in err


def test_unknown_profile_is_refused_by_the_parser_before_loading(config_file, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(config_file), "generate", "a cat", "--profile", "fast"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "invalid choice: 'fast'" in err and "streamed" in err


def test_unwritable_output_is_refused_before_generating(config_file, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    started = __import__("time").perf_counter()
    rc = main(["--config", str(config_file), "generate", "a cat", "--steps", "1", "--size", "256x256",
               "-o", str(blocker / "cat.png")])
    printed = capsys.readouterr()
    assert rc == 2 and "cannot write to" in printed.err and "pick another -o" in printed.err
    assert "model " not in printed.out and __import__("time").perf_counter() - started < 2  # nothing was loaded
    folder = tmp_path / "out-folder"
    folder.mkdir()
    (folder / "x.png").mkdir()
    assert main(["--config", str(config_file), "generate", "a cat", "-o", str(folder / "x.png")]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_generate_with_loras_and_an_image_records_them_in_the_png(config_file, tmp_path, capsys):
    from engine.image_input import fit_size
    from engine.png import format_parameters
    from engine.tiny import DEMO_LORA, build_tiny_pipeline
    from tests.support.lora_layouts import write

    lora = write(build_tiny_pipeline(), "peft", tmp_path / "mine" / "style.safetensors")
    photo = tmp_path / "photo.png"
    Image.fromarray((np.indices((200, 300)).sum(0) % 256).astype(np.uint8)).convert("RGB").save(photo)
    out = tmp_path / "out.png"
    rc = main(["--config", str(config_file), "generate", "a cat", "--seed", "3", "--steps", "4", "--image",
               str(photo), "--strength", "0.5", "--lora", f"{DEMO_LORA}:0.7", "--lora", f"{lora}:-0.5", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    params = read_png_params(out)
    with Image.open(out) as im:
        assert im.size == fit_size(300, 200)
    assert [(u["name"], u["strength"]) for u in params["loras"]] == [(DEMO_LORA, 0.7), ("style", -0.5)]
    assert params["denoise"] == 0.5 and len(params["image_sha256"]) == 64
    text = format_parameters(params)
    assert text.startswith(f"a cat <lora:{DEMO_LORA}:0.7> <lora:style:-0.5>\n") and "Lora hashes: " in text
    stored = tmp_path / "images" / "inputs" / f"{params['image_sha256']}.png"
    assert stored.is_file()                              # the input, stored clean as the bot stores attachments


@pytest.mark.parametrize("args, words", [
    (["--lora", "no-such-lora"], "There is no LoRA named 'no-such-lora'"),
    (["--lora", "tiny-random-demo:5"], "LoRA strength must be between -2 and 2"),
    (["--strength", "0.5"], "--strength needs --image"),
    (["--image", "/no/such.png"], "no such file"),
])
def test_bad_lora_and_image_arguments_exit_2_before_loading(config_file, capsys, args, words):
    rc = main(["--config", str(config_file), "generate", "a cat", "--steps", "2"] + args)
    assert rc == 2 and words in capsys.readouterr().err


def test_a_lora_of_other_widths_exits_2_before_loading(config_file, tmp_path, capsys):
    """--lora of a file made for another FLUX width is refused from its header (engine/lora_shapes.py), naming the
    file and the layer, before the model loads and before any image is written."""
    from engine.tiny import build_tiny_pipeline
    from tests.support.lora_layouts import write

    wide = write(build_tiny_pipeline(), "other_widths", tmp_path / "mine" / "wide.safetensors")
    rc = main(["--config", str(config_file), "generate", "a cat", "--steps", "2", "--lora", str(wide), "-o",
               str(tmp_path / "out.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "wide.safetensors was made for a FLUX model of other widths" in err
    assert not (tmp_path / "out.png").exists()
