"""A LoRA made for other widths is refused from its header, before any job, with the words the job's run would use:
the widths come from the model's configs (equal to the real modules'), admission and run time share one check, and
a file's verdict is read once per (path, size, mtime)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from engine.lora_convert import load_lora, pipe_widths
from engine.lora_files import LoraError, LoraLibrary, check_lora_header
from engine.lora_shapes import clip_linears, dit_linears, widths_from_configs
from engine.model_sizes import model_widths
from engine.settings import TINY, EngineSettings
from engine.tiny import build_tiny_pipeline
from tests.support import lora_layouts

FLUX_DEV = {"attention_head_dim": 128, "guidance_embeds": True, "in_channels": 64, "joint_attention_dim": 4096,
            "num_attention_heads": 24, "num_layers": 19, "num_single_layers": 38, "patch_size": 1,
            "pooled_projection_dim": 768, "axes_dims_rope": [16, 56, 56]}


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline()


@pytest.fixture(scope="module")
def tiny_widths(tiny_model_dir):
    return model_widths(EngineSettings(model=TINY, models_dir=str(tiny_model_dir.parent)))


def _linears(model) -> dict[str, tuple[int, int]]:
    return {n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def test_the_widths_from_the_configs_are_the_real_modules_widths(tiny_model_dir, pipe, tiny_widths):
    from diffusers import FluxTransformer2DModel

    # 1. tiny-random: what model_widths reads from its folder is what the loaded pipeline has.
    assert tiny_widths.linears == pipe_widths(pipe).linears
    clip = _linears(pipe.text_encoder)
    assert tiny_widths.linears["text_encoder"] == {n.removeprefix("text_model."): w for n, w in clip.items()}
    # 2. FLUX.1-dev's architecture (built on the meta device: no memory).
    with torch.device("meta"):
        dev = FluxTransformer2DModel.from_config(FLUX_DEV)
    assert dit_linears(FLUX_DEV) == _linears(dev) and len(dit_linears(FLUX_DEV)) == 8 + 2 + 19 * 14 + 38 * 6
    assert clip_linears({"text_config": {"hidden_size": 8, "intermediate_size": 9, "num_hidden_layers": 1}}) == {
        "encoder.layers.0.self_attn." + p: (8, 8) for p in ("q_proj", "k_proj", "v_proj", "out_proj")
    } | {"encoder.layers.0.mlp.fc1": (8, 9), "encoder.layers.0.mlp.fc2": (9, 8)}


def test_without_configs_on_disk_there_are_no_widths_and_only_the_run_checks(tmp_path):
    assert model_widths(EngineSettings(model=TINY, models_dir=str(tmp_path))) is None      # not built yet
    assert model_widths(EngineSettings(model=str(tmp_path / "absent"), models_dir=str(tmp_path))) is None


@pytest.mark.parametrize("layout", lora_layouts.LAYOUTS)
def test_loras_of_the_models_widths_pass_the_header_check(pipe, tiny_widths, tmp_path, layout):
    path = lora_layouts.write(pipe, layout, tmp_path / f"{layout}.safetensors")
    check_lora_header(path, tiny_widths)


def test_a_lora_of_other_widths_is_refused_from_its_header_with_the_runs_own_words(pipe, tiny_widths, tmp_path):
    path = lora_layouts.write(pipe, "other_widths", tmp_path / "wide style.safetensors")
    check_lora_header(path)                                # names alone cannot tell: FLUX's own layer names
    with pytest.raises(LoraError) as at_admission:
        check_lora_header(path, tiny_widths)
    with pytest.raises(LoraError) as at_run:
        load_lora(path, pipe)
    assert str(at_admission.value) == str(at_run.value)
    assert str(at_admission.value).startswith("wide style.safetensors was made for a FLUX model of other widths")
    assert "has 144 outputs, this model's has 96" in str(at_admission.value)


def test_a_mixed_layout_lora_of_other_widths_is_refused_from_its_header_with_the_runs_own_words(pipe, tiny_widths,
                                                                                                tmp_path):
    """The mixed `lora_transformer_` layout is read by fluxbot (engine/lora_convert.py), so its widths are checked
    before the job as for kohya files, with the words the run uses."""
    from safetensors.torch import save_file

    path = tmp_path / "mixed wide.safetensors"
    module = "lora_transformer_single_transformer_blocks_0_proj_mlp"
    save_file({f"{module}.lora_down.weight": torch.ones(2, 48), f"{module}.lora_up.weight": torch.ones(192, 2),
               f"{module}.alpha": torch.tensor(2.0)}, str(path))
    with pytest.raises(LoraError) as at_admission:
        check_lora_header(path, tiny_widths)
    with pytest.raises(LoraError) as at_run:
        load_lora(path, pipe)
    assert str(at_admission.value) == str(at_run.value) == (
        "mixed wide.safetensors was made for another model: 'single_transformer_blocks.0.proj_mlp' is 32→128 here, "
        "the LoRA's is 48→192.")


@pytest.mark.parametrize("tensors, words", [
    # a diffusers/PEFT pair of another width on a layer the model has
    ({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (2, 3072),
      "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": (3072, 2)},
     "'transformer_blocks.0.attn.to_q' is 32→32 here, the LoRA's is 3072→3072"),
    # FLUX.1-dev's 19th double block on a model of one
    ({"lora_unet_double_blocks_18_img_mlp_0.lora_down.weight": (2, 32),
      "lora_unet_double_blocks_18_img_mlp_0.lora_up.weight": (128, 2)},
     "it changes 'lora_unet_double_blocks_18_img_mlp_0', which the model does not have"),
    # an SD 1.5 LoRA in diffusers' layout
    ({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": (2, 320),
      "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": (320, 2)},
     "it changes 'unet.down_blocks.0.attentions.0.proj_in' of the transformer, which this model does not have"),
    # the mixed layout (kohya-style names of diffusers' modules): a feed-forward layer of FLUX.1-dev's widths, and a
    # block the model lacks
    ({"lora_transformer_transformer_blocks_0_ff_net_0_proj.lora_down.weight": (2, 3072),
      "lora_transformer_transformer_blocks_0_ff_net_0_proj.lora_up.weight": (12288, 2)},
     "'transformer_blocks.0.ff.net.0.proj' is 32→128 here, the LoRA's is 3072→12288"),
    ({"lora_transformer_transformer_blocks_5_attn_to_q.lora_down.weight": (2, 32),
      "lora_transformer_transformer_blocks_5_attn_to_q.lora_up.weight": (32, 2)},
     "it changes 'lora_transformer_transformer_blocks_5_attn_to_q', which the model does not have"),
    # a CLIP part for another CLIP, beside a DiT part that fits
    ({"lora_unet_double_blocks_0_img_mlp_0.lora_down.weight": (2, 32),
      "lora_unet_double_blocks_0_img_mlp_0.lora_up.weight": (128, 2),
      "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (2, 768),
      "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": (3072, 2)},
     "'encoder.layers.0.mlp.fc1' is 32→37 here, the LoRA's is 768→3072"),
])
def test_other_layouts_of_other_widths_are_refused_naming_the_file_and_the_layer(tiny_widths, tmp_path, tensors,
                                                                                  words):
    path = tmp_path / "odd.safetensors"
    _write_header_only(path, tensors)
    with pytest.raises(LoraError, match="^odd.safetensors ") as e:
        check_lora_header(path, tiny_widths)
    assert words in str(e.value)


def test_the_librarys_verdict_is_read_once_per_path_size_and_mtime(pipe, tiny_model_dir, tmp_path):
    settings = EngineSettings(model=TINY, models_dir=str(tiny_model_dir.parent))
    library = LoraLibrary(tmp_path, widths=lambda: model_widths(settings))
    path = lora_layouts.write(pipe, "kohya", tmp_path / "style.safetensors")
    library.check(library.find("style"))
    # 1. Another file of the same size and mtime: the remembered verdict stands (nothing is read again).
    stat = path.stat()
    wide = lora_layouts.write(pipe, "other_widths", tmp_path / "wide.safetensors")
    data = wide.read_bytes()
    wide.unlink()
    path.write_bytes(data[:stat.st_size].ljust(stat.st_size, b" "))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    library.check(library.find("style"))
    # 2. A new mtime: read again, and refused.
    path.write_bytes(data)
    with pytest.raises(LoraError, match="other widths"):
        library.check(library.find("style"))
    # 3. Without the model's widths only the names are checked (the run checks the rest).
    LoraLibrary(tmp_path).check(LoraLibrary(tmp_path).find("style"))


def test_a_widths_ident_names_its_configs():
    a = widths_from_configs(FLUX_DEV, None, "a")
    assert a.of("transformer", "proj_out") == (3072, 64) and a.of("text_encoder", "x") is None


def _write_header_only(path, shapes: dict[str, tuple[int, ...]]) -> None:
    """A safetensors file of float32 zeros with these shapes (written by hand: its data is never read here)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * int(torch.tensor(shape).prod())
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"\0" * offset)


# --- the room every plan keeps for LoRAs ([engine] lora_reserve_rank) ----------------------------------------------

def test_a_lora_set_larger_than_the_reserve_is_refused_at_admission_and_when_it_runs(pipe, tiny_settings, tmp_path):
    """tiny-random: one rank-4 LoRA on every block Linear fits a reserve of rank 4 (every Linear of the DiT and
    CLIP); two do not. Admission (the headers) and the engine (the converted pairs) refuse with the same words."""
    from dataclasses import replace

    from engine.errors import EngineError
    from engine.pipeline import Engine
    from engine.spec import JobSpec, LoraUse

    settings = replace(tiny_settings, lora_reserve_rank=4, loras_dir=str(tmp_path))
    library = LoraLibrary(tmp_path, widths=lambda: model_widths(settings), reserve_rank=4)
    files = [library.at(lora_layouts.write(pipe, layout, tmp_path / f"{layout}.safetensors"))
             for layout in ("kohya", "peft")]
    # 1. Admission: one fits, two do not; a reserve of 0 means no LoRAs.
    library.check_reserve(files[:1])
    with pytest.raises(LoraError) as at_admission:
        library.check_reserve(files)
    assert str(at_admission.value).startswith("These 2 LoRAs need 35 KiB of GPU memory; this bot keeps 33 KiB for a "
                                              "job's LoRAs (rank 4 on every layer of the model, [engine] "
                                              "lora_reserve_rank)")
    with pytest.raises(LoraError, match=r"^The LoRA 'kohya' needs 17 KiB .* \(\[engine\] lora_reserve_rank = 0\): "
                                        r"LoRAs are off\.$"):
        LoraLibrary(tmp_path, widths=lambda: model_widths(settings), reserve_rank=0).check_reserve(files[:1])
    # 2. The engine, on what it converted: the same words, and nothing is made.
    engine = Engine.load(settings, "cpu")
    try:
        spec = JobSpec("a cat", seed=1, steps=1, width=256, height=256,
                       loras=tuple(LoraUse(name=f.name, strength=1.0, path=str(f.path)) for f in files))
        with pytest.raises(EngineError) as at_run:
            engine.generate(spec)
        assert str(at_run.value) == str(at_admission.value)
        assert engine.generate(replace(spec, loras=spec.loras[:1])).images          # one LoRA runs
    finally:
        engine.close()
