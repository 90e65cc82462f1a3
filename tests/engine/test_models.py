"""Model sources: single-file BFL checkpoints, model ids with cached hashes, and errors that say what to do."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.errors import ModelNotFoundError
from engine.models import file_sha256, resolve_source
from engine.pipeline import Engine
from engine.spec import JobSpec
from engine.bfl_keys import bfl_to_diffusers, diffusers_to_bfl
from engine.tiny import ensure_tiny

SMALL = dict(steps=2, width=256, height=256)


def write_bfl_checkpoint(tiny_model_dir, path, *, prefix="", drop=None):
    """The tiny DiT's weights in the original BFL key layout, as one .safetensors file."""
    from diffusers import FluxTransformer2DModel

    dit = FluxTransformer2DModel.from_pretrained(tiny_model_dir / "transformer", dtype=torch.bfloat16)
    bfl = diffusers_to_bfl(dit.state_dict(), dit.config)
    if drop:
        bfl.pop(drop)
    save_file({prefix + k: v.contiguous() for k, v in bfl.items()}, str(path))
    return path


def test_single_bfl_file_loads_and_matches_the_folder_model(tiny_model_dir, tiny_settings, tiny_engine, tmp_path):
    ckpt = write_bfl_checkpoint(tiny_model_dir, tmp_path / "my_finetune.safetensors", prefix="model.diffusion_model.")
    settings = replace(tiny_settings, model=str(ckpt), base_model=str(tiny_model_dir))
    engine = Engine.load(settings, "cpu")
    try:
        digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
        assert engine.model_id == f"my_finetune@{digest[:12]}"
        a = engine.generate(JobSpec("a cat", seed=5, **SMALL))
        b = tiny_engine.generate(JobSpec("a cat", seed=5, **SMALL))  # same weights, other layout
        assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
        assert a.model_id != b.model_id
    finally:
        engine.close()


def test_bfl_converter_agrees_with_diffusers_on_flux_widths():
    """diffusers' converter hard-codes FLUX.1's 3072 width: compare on a key set with real widths (thin rows)."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    config = {"num_layers": 2, "num_single_layers": 2, "num_attention_heads": 24, "attention_head_dim": 128,
              "guidance_embeds": True}
    g = torch.Generator().manual_seed(0)
    rows = {"qkv": 3 * 3072, "linear1": 3 * 3072 + 4 * 3072}
    shapes = {}
    for k in diffusers_to_bfl_keys(config):
        part = k.rsplit(".", 2)[-2]
        shapes[k] = (rows.get(part, 6), 2) if k.endswith("weight") else (rows.get(part, 6),)
    bfl = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    ours = bfl_to_diffusers(dict(bfl), config)
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def diffusers_to_bfl_keys(config) -> list[str]:
    """The BFL key names of a model with this config (from a meta-device model, no weights)."""
    from diffusers import FluxTransformer2DModel

    tiny = {**config, "num_attention_heads": 2, "attention_head_dim": 16, "joint_attention_dim": 32,
            "pooled_projection_dim": 32, "axes_dims_rope": [4, 6, 6], "in_channels": 64, "patch_size": 1}
    with torch.device("meta"):
        model = FluxTransformer2DModel(**tiny)
    return list(diffusers_to_bfl(model.state_dict(), model.config))


def test_file_hash_is_cached_in_a_sidecar_keyed_by_size_and_mtime(tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"x" * 1000)
    real = hashlib.sha256(f.read_bytes()).hexdigest()
    assert file_sha256(f) == real
    sidecar = tmp_path / "w.safetensors.sha256"
    data = json.loads(sidecar.read_text())
    # 1. A sidecar that matches size+mtime is believed (the file is not read again).
    sidecar.write_text(json.dumps({**data, "sha256": "f" * 64}))
    assert file_sha256(f) == "f" * 64
    # 2. A changed file (new mtime) is hashed again.
    f.write_bytes(b"y" * 1000)
    os.utime(f, ns=(data["mtime_ns"] + 10**9, data["mtime_ns"] + 10**9))
    assert file_sha256(f) == hashlib.sha256(b"y" * 1000).hexdigest()


def test_tiny_model_is_rebuilt_when_incomplete(tiny_model_dir, tmp_path):
    copy = tmp_path / "tiny-random"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "vae" / "config.json").unlink()
    assert ensure_tiny(tmp_path) == copy and (copy / "vae" / "config.json").exists()


def test_missing_model_path_says_how_to_get_it(tiny_settings, tmp_path):
    settings = replace(tiny_settings, model=str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match=r"no such file or folder.*python -m bot download"):
        Engine.load(settings, "cpu")


def test_incomplete_folder_names_the_missing_part(tiny_model_dir, tiny_settings, tmp_path):
    folder = tmp_path / "FLUX.1-dev"
    shutil.copytree(tiny_model_dir, folder)
    shutil.rmtree(folder / "vae")
    with pytest.raises(ModelNotFoundError, match=r"not a complete diffusers FLUX.1-dev folder \(vae missing\)"):
        resolve_source(replace(tiny_settings, model=str(folder)))


def test_folder_without_dit_weights_is_refused(tiny_model_dir, tiny_settings, tmp_path):
    folder = tmp_path / "FLUX.1-dev"
    shutil.copytree(tiny_model_dir, folder)
    for f in (folder / "transformer").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelNotFoundError, match=r"transformer/\*\.safetensors missing"):
        resolve_source(replace(tiny_settings, model=str(folder)))


def test_single_file_without_base_folder_says_download_base(tiny_model_dir, tiny_settings, tmp_path):
    ckpt = write_bfl_checkpoint(tiny_model_dir, tmp_path / "dit.safetensors")
    with pytest.raises(ModelNotFoundError, match=r"base_model.*python -m bot download base"):
        resolve_source(replace(tiny_settings, model=str(ckpt), base_model=str(tmp_path / "missing")))


def test_wrong_file_types_and_contents_are_refused(tiny_model_dir, tiny_settings, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"pickle")
    with pytest.raises(ModelNotFoundError, match="not a .safetensors file"):
        resolve_source(replace(tiny_settings, model=str(ckpt), base_model=str(tiny_model_dir)))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelNotFoundError, match="not a readable safetensors file"):
        Engine.load(replace(tiny_settings, model=str(junk), base_model=str(tiny_model_dir)), "cpu")
    partial = write_bfl_checkpoint(tiny_model_dir, tmp_path / "partial.safetensors", drop="txt_in.weight")
    with pytest.raises(ModelNotFoundError, match=r"not a FLUX.1 DiT checkpoint.*txt_in.weight"):
        Engine.load(replace(tiny_settings, model=str(partial), base_model=str(tiny_model_dir)), "cpu")
