"""Issue 14's parity on the CPU: fluxbot against FLUX.1's reference (diffusers' FluxPipeline) and the files the
peer bench (bench/peer_bench.py) hands to every implementation. The GPU table and the DiffSynth rows come from the
same script on the GPU machine (docs/benchmarks.md, issue 14)."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.settings import EngineSettings, TINY
from engine.spec import JobSpec

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def peer():
    return _load("peer_bench")


def test_fluxbot_makes_the_reference_pipelines_image_pixel_for_pixel(tiny_model_dir, tmp_path):
    """Same checkpoint, prompt, seed, size, steps and guidance: fluxbot's engine (fp8 off) and diffusers'
    FluxPipeline called as FLUX.1's examples call it (a CPU generator) give the same image."""
    from diffusers import FluxPipeline

    from engine.pipeline import Engine

    settings = EngineSettings(model=TINY, models_dir=str(tiny_model_dir.parent), profile="resident", devices=["cpu"],
                              images_dir=str(tmp_path / "images"), max_sequence_length=64, fp8="off",
                              loras_dir=str(tmp_path / "loras"))
    engine = Engine.load(settings, "cpu")
    try:
        ours = engine.generate(JobSpec("a red fox in the snow", seed=11, steps=3, width=320, height=256,
                                       guidance=3.5)).images[0]
    finally:
        engine.close()
    pipe = FluxPipeline.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    theirs = pipe("a red fox in the snow", generator=torch.Generator("cpu").manual_seed(11), num_inference_steps=3,
                  width=320, height=256, guidance_scale=3.5, max_sequence_length=64).images[0]
    assert ours.size == theirs.size == (320, 256)
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_fluxbots_initial_noise_is_the_reference_pipelines_own_draw(peer):
    """diffusers draws (1, 16, h/8, w/8) from the CPU generator in bf16 and packs it; fluxbot draws float32 and
    packs: the same latents, so a seed means the same image in both (DiffSynth draws on the GPU instead)."""
    from diffusers import FluxPipeline
    from diffusers.utils.torch_utils import randn_tensor

    from engine.noise import initial_latents

    for seed, (w, h) in ((7, (1024, 1024)), (123, (512, 768))):
        drawn = randn_tensor((1, 16, h // 8, w // 8), generator=torch.Generator("cpu").manual_seed(seed),
                             device=torch.device("cpu"), dtype=torch.bfloat16)
        ours = initial_latents(seed, w, h)
        assert torch.equal(ours.bfloat16(), FluxPipeline._pack_latents(drawn, 1, 16, h // 8, w // 8))
        assert torch.equal(peer.unpack(ours, w, h).bfloat16(), drawn)  # the bench's unpacking is its inverse


def test_the_reference_schedule_is_bfls_and_the_seeds_is_not(peer, tmp_path):
    """FLUX.1's schedule (BFL's get_schedule: shift from the image's token count, last sigma 1/steps shifted) is
    what FluxPipeline, and so fluxbot, denoises with; DiffSynth 1.1.9's FluxImagePipeline uses a fixed shift 3
    from 1 to 0.003 (its FlowMatchScheduler defaults, written out in docs/benchmarks.md)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                                    shift=3.0, use_dynamic_shifting=True).save_config(tmp_path / "scheduler")
    for res in (1024, 512):
        ref = peer.reference_sigmas(tmp_path, res, 20)
        assert len(ref) == 21 and ref[-1] == 0.0
        assert max(abs(a - b) for a, b in zip(ref, peer.bfl_sigmas(res, 20))) < 1e-6
    assert peer.reference_sigmas(tmp_path, 1024, 20)[-2] == pytest.approx(0.1425, abs=1e-4)
    assert peer.reference_sigmas(tmp_path, 512, 20)[-2] == pytest.approx(0.0899, abs=1e-4)


def test_the_bench_writes_clip_as_the_release_names_it_and_fluxbot_loads_those_weights(tmp_path):
    """FLUX.1-dev's text_encoder/model.safetensors names every tensor `text_model.…` and its configs name their
    class: DiffSynth recognises the files by that (it silently loads nothing otherwise); transformers 5 drops the
    prefix when loading, so fluxbot gets the file's weights, not a random init."""
    from safetensors import safe_open
    from transformers import CLIPTextModel

    pb = _load("plan_bench")
    pb.write_model(tmp_path, pb.TINY, "cpu")
    base = tmp_path / pb.BASE
    with safe_open(str(base / "text_encoder" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        token_embedding = f.get_tensor("text_model.embeddings.token_embedding.weight")
    assert keys and all(k.startswith("text_model.") for k in keys) and not any("position_ids" in k for k in keys)
    assert json.loads((base / "text_encoder" / "config.json").read_text())["architectures"] == ["CLIPTextModel"]
    assert json.loads((base / "text_encoder_2" / "config.json").read_text())["architectures"] == ["T5EncoderModel"]
    loaded = CLIPTextModel.from_pretrained(base / "text_encoder")
    assert torch.equal(loaded.embeddings.token_embedding.weight.to(token_embedding.dtype), token_embedding)


def test_parity_measures(peer):
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = a.copy()
    assert peer.psnr(a, b) == float("inf") and peer.rel_l2(torch.ones(3), torch.ones(3)) == 0.0
    b[0, 0, 0] = 255  # one channel of one pixel off by the full range: MSE = 255² / 48
    assert peer.psnr(a, b) == pytest.approx(10 * np.log10(48), abs=1e-9)
    assert peer.rel_l2(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])) == pytest.approx(1.0)


def test_only_known_rows_run_in_the_order_given(peer):
    assert [r.name for r in peer.chosen_rows("seed,resident")] == ["seed", "resident"]
    assert peer.chosen_rows("")[0].name == "first-start"
    with pytest.raises(SystemExit, match="sede"):
        peer.chosen_rows("sede")
