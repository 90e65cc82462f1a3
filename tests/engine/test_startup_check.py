"""At start-up the engine refuses downloaded model files that changed since `python -m bot download`."""
import shutil
from dataclasses import replace

import pytest

from engine.download import write_manifest
from engine.errors import ModelNotFoundError
from engine.pipeline import Engine


@pytest.fixture
def downloaded_folder(tiny_model_dir, tmp_path):
    """The tiny diffusers folder as if fetched by `download`: a copy with a manifest of every file."""
    folder = tmp_path / "FLUX-tiny"
    shutil.copytree(tiny_model_dir, folder)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    write_manifest(folder, files)
    return folder


def test_intact_download_loads_and_generates(downloaded_folder, tiny_settings):
    engine = Engine.load(replace(tiny_settings, model=str(downloaded_folder)), "cpu")
    try:
        assert engine.model_id.startswith("FLUX-tiny@")
    finally:
        engine.close()


def test_truncated_weights_are_refused_with_the_file_named(downloaded_folder, tiny_settings):
    weights = next((downloaded_folder / "transformer").glob("*.safetensors"))
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size - 1)
    with pytest.raises(ModelNotFoundError) as e:
        Engine.load(replace(tiny_settings, model=str(downloaded_folder)), "cpu")
    assert weights.name in str(e.value) and "--verify" in str(e.value)
