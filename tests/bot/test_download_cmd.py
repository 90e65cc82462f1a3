"""`python -m bot download` end to end against a fake ModelScope on loopback: the files land under
models_dir, the manifest verifies, and the command prints the exact config lines."""
from __future__ import annotations

import argparse
import os

import pytest

from bot.download_cmd import download_command
from engine import download as dl
from tests.fakemodelscope import FakeModelScope

FLUX_FILES = {
    "model_index.json": b"{}", "scheduler/scheduler_config.json": b"{}", "text_encoder/config.json": b"{}",
    "text_encoder/model.safetensors": os.urandom(2000), "text_encoder_2/config.json": b"{}",
    "text_encoder_2/model.safetensors": os.urandom(3000), "tokenizer/vocab.json": b"{}",
    "tokenizer_2/spiece.model": b"x", "transformer/config.json": b"{}", "vae/config.json": b"{}",
    "vae/diffusion_pytorch_model.safetensors": os.urandom(1000), "flux1-dev.safetensors": os.urandom(5000),
    "ae.safetensors": os.urandom(500),
}


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config.toml"
    path.write_text('[engine]\nmodels_dir = "models"\n')
    return str(path)


def _args(config, what, verify=False):
    return argparse.Namespace(config=config, what=what, source="modelscope", repo=None, verify=verify)


def test_majicflus_from_modelscope_lands_verifies_and_prints_the_config_lines(config, tmp_path, monkeypatch, capsys):
    dit = os.urandom(50_000)
    with FakeModelScope({"majicflus_v134.safetensors": dit, "README.md": b"hi"},
                        more_repos={dl.FLUX_DEV_REPO: FLUX_FILES}) as ms:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", ms.endpoint)
        assert download_command(_args(config, "majicflus")) == 0
    out = capsys.readouterr().out
    assert 'model = "models/majicflus_v1/majicflus_v134.safetensors"' in out
    assert 'base_model = "models/FLUX.1-dev"' in out
    assert (tmp_path / "models/majicflus_v1/majicflus_v134.safetensors").read_bytes() == dit
    assert not (tmp_path / "models/FLUX.1-dev/flux1-dev.safetensors").exists()  # not needed, not fetched
    assert not (tmp_path / "models/FLUX.1-dev/ae.safetensors").exists()

    assert download_command(_args(config, "majicflus", verify=True)) == 0
    assert capsys.readouterr().out.count("SHA-256 verified") == 2
    (tmp_path / "models/FLUX.1-dev/vae/diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 1000)
    assert download_command(_args(config, "majicflus", verify=True)) == 1
    assert "vae/diffusion_pytorch_model.safetensors" in capsys.readouterr().out


def test_verify_before_any_download_fails_with_a_hint(config, capsys):
    assert download_command(_args(config, "flux-dev", verify=True)) == 1
    assert "python -m bot download" in capsys.readouterr().out


def test_an_unreachable_source_fails_with_a_message_not_a_traceback(config, monkeypatch, capsys):
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "http://127.0.0.1:9")
    assert download_command(_args(config, "majicflus")) == 1
    assert "download failed: cannot read the file list" in capsys.readouterr().err


def test_a_hostile_file_list_is_refused_and_nothing_lands_outside_models_dir(config, tmp_path, monkeypatch, capsys):
    """A custom MODELSCOPE_ENDPOINT lists `vae/../../../escaped.txt`: exit 1, a message naming the file, and
    neither that file nor any other is written."""
    hostile = {**FLUX_FILES, "vae/../../../escaped.txt": b"owned"}
    with FakeModelScope({}, repo="unused/repo", more_repos={dl.FLUX_DEV_REPO: hostile}) as ms:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", ms.endpoint)
        assert download_command(_args(config, "base")) == 1
    err = capsys.readouterr().err
    assert "refused the file 'vae/../../../escaped.txt'" in err and "nothing was downloaded" in err
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (tmp_path / "models").exists()
