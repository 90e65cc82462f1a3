"""fp8 storage of the DiT is real (weights are float8 between forwards); encoders and VAE are bf16."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.pipeline import Engine
from engine.precision import dit_bytes, linear_dtypes
from engine.spec import JobSpec
from tests.conftest import with_settings

FP8 = torch.float8_e4m3fn


def test_all_linear_stores_every_dit_linear_in_fp8_and_the_rest_in_bf16(tiny_engine):
    pipe = tiny_engine.pipe
    dtypes = linear_dtypes(pipe.transformer)
    assert dtypes and set(dtypes.values()) == {FP8}  # the modulation Linears (norm1.linear …) too
    assert "transformer_blocks.0.norm1.linear" in dtypes
    # not-Linear DiT parameters (RMS norm scales) stay bf16
    others = {p.dtype for n, p in pipe.transformer.named_parameters() if "norm_q" in n or "norm_k" in n}
    assert others == {torch.bfloat16}
    assert any(hasattr(m, "_diffusers_hook") for m in pipe.transformer.modules())  # the casting hooks
    for name in ("text_encoder", "text_encoder_2", "vae"):
        module = getattr(pipe, name)
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}, name
        assert not any(hasattr(m, "_diffusers_hook") for m in module.modules()), f"{name} must not be layerwise-cast"


def test_fp8_storage_survives_a_generation(tiny_engine):
    tiny_engine.generate(JobSpec("a cat", seed=1, steps=1, width=256, height=256))
    assert set(linear_dtypes(tiny_engine.pipe.transformer).values()) == {FP8}


@pytest.mark.parametrize("mode", ["diffusers-default", "off"])
def test_other_modes_keep_more_in_bf16(tiny_settings, tiny_engine, mode):
    engine = Engine.load(with_settings(tiny_settings, fp8=mode), "cpu")
    try:
        dtypes = linear_dtypes(engine.pipe.transformer)
        assert dtypes["transformer_blocks.0.norm1.linear"] == torch.bfloat16  # "norm" is skipped / nothing fp8
        if mode == "off":
            assert set(dtypes.values()) == {torch.bfloat16}
            assert engine.precision.startswith("dit=bfloat16")
        else:
            assert dtypes["transformer_blocks.0.attn.to_q"] == FP8
            assert engine.precision.startswith("dit=float8_e4m3fn(diffusers-default)")
        assert dit_bytes(engine.pipe.transformer) > dit_bytes(tiny_engine.pipe.transformer)
        # still a working, deterministic model
        a = engine.generate(JobSpec("a cat", seed=2, steps=1, width=256, height=256))
        b = engine.generate(JobSpec("a cat", seed=2, steps=1, width=256, height=256))
        assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    finally:
        engine.close()


@pytest.mark.parametrize("mode", ["all-linear", "diffusers-default"])
def test_loader_reads_fp8_directly_and_matches_diffusers_load_then_cast(tiny_model_dir, mode):
    """The DiT is cast to fp8 tensor by tensor while reading (no full bf16 copy in RAM), with the same
    bytes as loading everything in bf16 with diffusers and casting afterwards."""
    from diffusers import FluxPipeline

    from engine.models import load_dit
    from engine.precision import apply_precision

    files = sorted((tiny_model_dir / "transformer").glob("*.safetensors"))
    fresh = load_dit(files, tiny_model_dir / "transformer", mode)
    read_as = linear_dtypes(fresh)  # before any hook was applied
    assert read_as["transformer_blocks.0.attn.to_q"] == FP8
    plain = FluxPipeline.from_pretrained(tiny_model_dir, dtype=torch.bfloat16, local_files_only=True)
    apply_precision(plain, mode)
    assert read_as == linear_dtypes(plain.transformer)
    ours, theirs = fresh.state_dict(), plain.transformer.state_dict()
    assert set(ours) == set(theirs)
    for k in ours:
        assert ours[k].dtype == theirs[k].dtype, k
        assert torch.equal(ours[k].view(torch.uint8), theirs[k].view(torch.uint8)), k
