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
                                         (["--steps", "60"], "1 to 50"),
                                         (["--variation-strength", "0.5"], "needs --variation-seed")])
def test_bad_arguments_exit_2_with_a_clear_error_before_loading(config_file, capsys, args, words):
    rc = main(["--config", str(config_file), "generate", "a cat", *args])
    assert rc == 2 and words in capsys.readouterr().err


def test_missing_model_exits_1_and_says_how_to_download(config_file, tmp_path, capsys):
    rc = main(["--config", str(config_file), "generate", "a cat", "--steps", "1", "--size", "256x256",
               "--model", str(tmp_path / "nothing-here")])
    assert rc == 1 and "python -m bot download" in capsys.readouterr().err
