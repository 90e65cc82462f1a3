"""LoRA files without a model (engine/lora_files.py): the folder's names, A1111's short hash, trigger words from the
metadata, `<lora:name:0.8>` in a prompt, and the PNG's `Lora hashes` in A1111's format."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from engine.lora_files import LoraError, LoraLibrary, hash_file, split_prompt_loras, trigger_words
from engine.png import format_parameters


def _lora(path, metadata=None):
    save_file({"lora_unet_x.lora_down.weight": torch.ones(2, 4)}, str(path), metadata=metadata)
    return path


def test_names_are_the_safetensors_files_of_the_folder(tmp_path):
    _lora(tmp_path / "b-style.safetensors")
    _lora(tmp_path / "A cat.safetensors")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.safetensors").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    _lora(tmp_path / "sub" / "deep.safetensors")
    assert LoraLibrary(tmp_path).names() == ["A cat", "b-style"]


def test_the_short_hash_is_a1111s_sha256_of_the_data_after_the_header(tmp_path):
    path = _lora(tmp_path / "x.safetensors", {"ss_output_name": "x"})
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    hashes = hash_file(path)
    assert hashes.sha256 == hashlib.sha256(raw).hexdigest()
    assert hashes.short == hashlib.sha256(raw[8 + n:]).hexdigest()[:12]   # A1111's addnet hash, first 12 hex
    # metadata does not change the short hash (it hashes the tensors only), it does change the file's SHA-256
    other = _lora(tmp_path / "y.safetensors", {"ss_output_name": "y"})
    assert hash_file(other).short == hashes.short and hash_file(other).sha256 != hashes.sha256


def test_trigger_words_come_from_the_model_spec_or_the_training_tags():
    assert trigger_words({"modelspec.trigger_phrase": "ohwx man, in a suit"}) == ("ohwx man", "in a suit")
    freq = {"10_ohwx": {"ohwx": 30, "man": 12, "smile": 3}, "5_reg": {"man": 5}}
    assert trigger_words({"ss_tag_frequency": json.dumps(freq)}, most=2) == ("ohwx", "man")
    assert trigger_words({"ss_tag_frequency": "{broken"}) == () and trigger_words({}) == ()


def test_prompt_tags_are_taken_out_of_the_prompt():
    assert split_prompt_loras("a cat <lora:Anime Style:0.8> in the rain <LoRA:detail>") == \
        ("a cat in the rain", [("Anime Style", 0.8), ("detail", 1.0)])
    assert split_prompt_loras("no tags here") == ("no tags here", [])


@pytest.mark.parametrize("prompt, words", [
    ("<lora:x:strong>", "the strength must be a number"),
    ("<lora:x:3>", "LoRA strength must be between -2 and 2"),
    ("<lora:x:1:te=1>", "write <lora:name> or <lora:name:strength>"),
    ("<lora:../../etc/passwd:1>", "is not a LoRA name"),
])
def test_bad_prompt_tags_are_refused_with_a_clear_message(prompt, words):
    with pytest.raises(LoraError, match=words):
        split_prompt_loras(prompt)


def test_the_png_parameters_carry_the_loras_as_a1111_writes_them():
    params = {"prompt": "a cat", "steps": 20, "guidance": 3.5, "seed": 7, "width": 1024, "height": 1024,
              "model_id": "flux@0123456789ab",
              "loras": [{"name": "Anime, Style", "strength": 0.8, "short_hash": "aaaaaaaaaaaa"},
                        {"name": "detail", "strength": -1.0, "short_hash": "bbbbbbbbbbbb"}]}
    text = format_parameters(params)
    prompt, settings = text.split("\n")
    assert prompt == "a cat <lora:Anime, Style:0.8> <lora:detail:-1>"
    assert settings.endswith('Lora hashes: "Anime Style: aaaaaaaaaaaa, detail: bbbbbbbbbbbb"')


@pytest.mark.parametrize("tensors, words", [
    ({"x.weight": torch.ones(2)}, "holds no LoRA weights"),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(2, 4)}, "not a LoRA for FLUX"),
    ({"transformer.proj_out.lora_A.weight": torch.ones(2, 4), "transformer.proj_out.lora_magnitude_vector": torch.ones(4)},
     "DoRA"),
    ({"text_encoders.t5xxl.transformer.x.lora_A.weight": torch.ones(2, 4)}, "T5"),
])
def test_the_header_check_refuses_what_is_not_a_flux_lora_before_any_job(tmp_path, tensors, words):
    from engine.lora_files import check_lora_header

    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(LoraError, match=words):
        check_lora_header(path)


def test_the_header_check_passes_flux_loras(tmp_path):
    from engine.lora_files import check_lora_header

    path = _lora(tmp_path / "ok.safetensors")
    with pytest.raises(LoraError):            # lora_unet_x is not a FLUX block name
        check_lora_header(path)
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.ones(2, 4)}, str(path))
    check_lora_header(path)
