"""`python -m bot plan`: the placement for a described machine without a GPU or the weights, bad input, and
sizes read from the model files when they are there."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bot.cli import main


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("FLUXBOT_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)


def _config(tmp_path: Path, model: str = "models/FLUX.1-dev", extra: str = "") -> str:
    path = tmp_path / "config.toml"
    path.write_text(f'[engine]\nmodel = "{model}"\nmodels_dir = "{tmp_path / "models"}"\n{extra}')
    return str(path)


def _plan(capsys, *argv) -> tuple[int, str]:
    rc = main(["plan", *argv])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_a_16_gib_pc_with_an_8_gib_card_gets_a_plan_before_downloading_anything(tmp_path, capsys):
    rc, out = _plan(capsys, "--config", _config(tmp_path), "--vram", "8", "--ram", "16")
    assert rc == 0
    assert "budgets: 7.50 GiB VRAM, 13.50 GiB host RAM" in out              # card - context, machine - OS
    assert "FLUX.1-dev reference sizes for the DiT, T5, CLIP, VAE: not found" in out
    # room for rank-64 LoRAs ([engine] lora_reserve_rank's default) costs 0.66 GiB of resident blocks
    assert "LoRAs: 0.67 GiB kept on the device" in out
    assert "10/19 double and 11/38 single blocks stay on the GPU (4.62 GiB" in out
    assert "s/image at 1024x1024" in out and "peak VRAM" in out and "CANNOT FIT" not in out
    rc, out = _plan(capsys, "--config", _config(tmp_path, extra="lora_reserve_rank = 0"), "--vram", "8", "--ram", "16")
    assert rc == 0 and "LoRAs:" not in out
    assert "15/19 double and 4/38 single blocks stay on the GPU (5.28 GiB" in out   # the ring model's fastest mix


def test_a_card_too_small_says_what_it_needs_and_the_cheapest_change(tmp_path, capsys):
    rc, out = _plan(capsys, "--config", _config(tmp_path), "--vram", "1.75", "--ram", "16")
    assert rc == 1 and "CANNOT FIT: it needs 2.0" in out       # with room for rank-64 LoRAs (0.67 GiB)
    no_loras = _config(tmp_path, extra="lora_reserve_rank = 0")
    rc, out = _plan(capsys, "--config", no_loras, "--vram", "1.75", "--ram", "16")
    assert rc == 1
    assert "CANNOT FIT: it needs 1.3" in out and "a smaller size (" in out
    rc, out = _plan(capsys, "--config", no_loras, "--vram", "1.75", "--ram", "16", "--size", "512x512")
    assert rc == 0 and "at 512x512" in out


@pytest.mark.parametrize("argv, words", [
    (["--vram", "0"], "--vram 0: must be a positive number"),
    (["--ram", "-4"], "--ram -4: must be a positive number"),
    (["--size", "100x100"], "--size 100x100: Width 100 is not allowed"),
    (["--size", "big"], "write it as WIDTHxHEIGHT"),
])
def test_bad_arguments_exit_2_with_a_clear_message(tmp_path, capsys, argv, words):
    rc, out = _plan(capsys, "--config", _config(tmp_path), "--vram", "8", "--ram", "16", *argv)
    assert rc == 2 and words in out


def test_a_ram_budget_larger_than_the_machine_names_the_key(tmp_path, capsys):
    rc, out = _plan(capsys, "--config", _config(tmp_path, extra="ram_budget_gib = 100000"), "--vram", "8")
    assert rc == 2 and "[engine] ram_budget_gib = 100000 is larger than this machine" in out


def test_sizes_come_from_the_model_files_when_they_are_there(tmp_path, capsys, tiny_model_dir):
    folder = tmp_path / "models" / "FLUX.1-dev"       # a diffusers folder: the tiny model's files, renamed
    shutil.copytree(tiny_model_dir, folder)
    rc, out = _plan(capsys, "--config", _config(tmp_path), "--vram", "4", "--ram", "8")
    assert rc == 0 and "model: the model files: DiT 0.00 GiB (1 double + 1 single blocks)" in out
    assert "everything fits on the GPU" in out


def test_the_test_model_plans_for_flux_dev(tmp_path, capsys):
    rc, out = _plan(capsys, "--config", _config(tmp_path, model="tiny-random"), "--vram", "8", "--ram", "16")
    assert rc == 0 and "[engine] model is tiny-random, so the plan is for the model `download` fetches" in out
    assert "19 double + 38 single blocks" in out
