"""LoRAs on the tiny model (CPU): every layout gives the same deltas and pixels, a LoRA changes the image and the
same seed gives the same pixels again, strength 0 is no LoRA, switching back leaves no trace, every placement plan
gives resident's pixels, text-encoder LoRAs key the prompt cache, and bad files are refused with a clear message."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save, save_file

from engine.errors import EngineError
from engine.lora_convert import load_lora
from engine.lora_files import LoraError, LoraLibrary, hash_file
from engine.pipeline import Engine
from engine.spec import JobSpec, LoraUse
from engine.tiny import DEMO_LORA, build_tiny_pipeline
from tests.support import lora_layouts

SPEC = JobSpec("a red cat", seed=3, steps=2, width=256, height=256)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def use(path, strength=1.0, **kw) -> LoraUse:
    return LoraUse(name=path.stem, strength=strength, path=str(path), **kw)


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline()


@pytest.fixture(scope="module")
def files(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    return {layout: lora_layouts.write(pipe, layout, folder / f"{layout}.safetensors") for layout in lora_layouts.LAYOUTS}


def deltas(weights) -> dict[tuple[str, str], torch.Tensor]:
    return {(c, m): (p.up.float() @ p.down.float()) * p.scale for c, mods in weights.pairs.items() for m, p in mods.items()}


# ------------------------------------------------------------------------------------------------- layouts

@pytest.mark.parametrize("layout", ["comfy", "peft", "mixed"])
def test_every_layout_gives_the_kohya_files_deltas(pipe, files, layout):
    reference, other = deltas(load_lora(files["kohya"], pipe)), deltas(load_lora(files[layout], pipe))
    assert reference.keys() == other.keys() and len(reference) == 20   # every Linear of both blocks, q/k/v split
    for key, d in reference.items():
        assert torch.equal(other[key], d), key


def test_xlabs_attention_lora_gives_the_same_deltas_on_its_layers(pipe, files):
    reference, other = deltas(load_lora(files["kohya"], pipe)), deltas(load_lora(files["xlabs"], pipe))
    assert len(other) == 8                              # q/k/v and out of both streams of the double block
    for key, d in other.items():
        assert torch.equal(d, reference[key]), key


def test_the_bfl_converter_matches_diffusers_at_flux1_widths():
    """diffusers' own kohya converter hard-codes FLUX.1's widths; at those widths ours gives the same deltas."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    from engine.bfl_keys import bfl_linear_parts
    from engine.lora_convert import _from_bfl
    from engine.lora_shapes import ModelWidths

    gen = torch.Generator().manual_seed(0)
    config = {"num_layers": 19, "num_single_layers": 38, "num_attention_heads": 24, "attention_head_dim": 128,
              "guidance_embeds": True}
    shapes = {"double_blocks_0_img_attn_qkv": (3072, 9216), "double_blocks_1_txt_mlp_2": (12288, 3072),
              "double_blocks_2_txt_mod_lin": (3072, 18432), "single_blocks_0_linear1": (3072, 21504),
              "single_blocks_5_linear2": (15360, 3072), "final_layer_adaLN_modulation_1": (3072, 6144)}
    state = {}
    for name, (fan_in, fan_out) in shapes.items():
        state[f"lora_unet_{name}.lora_down.weight"] = torch.randn(2, fan_in, generator=gen)
        state[f"lora_unet_{name}.lora_up.weight"] = torch.randn(fan_out, 2, generator=gen)
        # alpha 1 of rank 2 (scale 0.5); diffusers leaves the final layer's alpha out ("TODO: alphas"), so there
        # alpha = rank (scale 1), where both agree
        state[f"lora_unet_{name}.alpha"] = torch.tensor(2.0 if name.startswith("final_layer") else 1.0)
    theirs = _convert_kohya_flux_lora_to_diffusers(dict(state))
    ours = _from_bfl("x", dict(state), ModelWidths(linears={}, bfl_parts=bfl_linear_parts(config)))
    expected = {k.removeprefix("transformer.").removesuffix(".lora_A.weight"):
                theirs[k.replace("lora_A", "lora_B")] @ theirs[k] for k in theirs if k.endswith("lora_A.weight")}
    got = {m: p.up @ p.down * p.scale for m, p in ours["transformer"].items()}
    assert expected.keys() == got.keys() and len(got) == 11
    for m in got:
        torch.testing.assert_close(got[m], expected[m], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- pixels

def test_a_lora_changes_the_image_and_the_same_seed_gives_the_same_pixels(tiny_engine, files):
    plain = pixels(tiny_engine.generate(SPEC))
    spec = replace(SPEC, loras=(use(files["kohya"]),))
    first, again = tiny_engine.generate(spec), tiny_engine.generate(spec)
    assert np.array_equal(pixels(first), pixels(again))
    assert np.abs(pixels(first) - plain).mean() > 2
    # after the LoRA job a job without LoRA is the plain image again: nothing of the LoRA stays on the model
    assert np.array_equal(pixels(tiny_engine.generate(SPEC)), plain)
    recorded = first.spec.loras[0]
    hashes = hash_file(files["kohya"])
    assert (recorded.sha256, recorded.short_hash) == (hashes.sha256, hashes.short)


def test_strength_zero_is_no_lora_and_strengths_scale_the_change(tiny_engine, files):
    plain = pixels(tiny_engine.generate(SPEC))
    zero = tiny_engine.generate(replace(SPEC, loras=(use(files["kohya"], 0.0),)))
    assert np.array_equal(pixels(zero), plain)
    half = pixels(tiny_engine.generate(replace(SPEC, loras=(use(files["kohya"], 0.5),))))
    full = pixels(tiny_engine.generate(replace(SPEC, loras=(use(files["kohya"], 1.0),))))
    assert 0 < np.abs(half - plain).mean() < np.abs(full - plain).mean()


@pytest.mark.parametrize("layout", ["comfy", "peft", "mixed"])
def test_every_layout_gives_the_same_pixels(tiny_engine, files, layout):
    kohya = pixels(tiny_engine.generate(replace(SPEC, loras=(use(files["kohya"]),))))
    other = pixels(tiny_engine.generate(replace(SPEC, loras=(use(files[layout]),))))
    assert np.array_equal(kohya, other)


def test_two_loras_apply_together_and_jobs_with_other_sets_never_share_a_batch(tiny_engine, files):
    a, b = replace(SPEC, loras=(use(files["kohya"], 0.7),)), replace(SPEC, loras=(use(files["xlabs"], -0.8),))
    both = replace(SPEC, loras=(use(files["kohya"], 0.7), use(files["xlabs"], -0.8)))
    assert len({s.batch_key() for s in (SPEC, a, b, both)}) == 4
    alone = [pixels(tiny_engine.generate(s)) for s in (SPEC, a, b, both)]
    batched = [pixels(r) for r in tiny_engine.generate_batch([SPEC, a, b, both])]
    for x, y in zip(alone, batched):
        assert np.array_equal(x, y)
    assert not np.array_equal(alone[3], alone[1]) and not np.array_equal(alone[3], alone[2])


def test_a_text_encoder_lora_changes_the_embeddings_and_has_its_own_cache_entry(tiny_engine, files):
    with_te = replace(SPEC, prompt="a green tree", loras=(use(files["kohya_te"]),))
    without_te = replace(SPEC, prompt="a green tree", loras=(use(files["kohya"]),))
    cache = tiny_engine.prompt_cache
    misses = cache.misses
    x, y = pixels(tiny_engine.generate(with_te)), pixels(tiny_engine.generate(without_te))
    assert cache.misses == misses + 2                  # the same prompt encoded twice: once per CLIP variant
    assert not np.array_equal(x, y)
    assert np.array_equal(pixels(tiny_engine.generate(with_te)), x)


@pytest.mark.parametrize("changes", [dict(profile="streamed"), dict(profile="streamed", vram_budget_gib=1.0),
                                     dict(profile="streamed", ram_budget_gib=0.01)],
                         ids=["streamed", "budgeted", "disk"])
def test_a_lora_gives_resident_pixels_on_every_plan(tiny_engine, tiny_settings, files, changes):
    spec = replace(SPEC, loras=(use(files["kohya_te"], 0.8),))
    expected = pixels(tiny_engine.generate(spec))
    engine = Engine.load(replace(tiny_settings, **changes), "cpu")
    try:
        assert engine.profile != "resident"
        assert np.array_equal(pixels(engine.generate(spec)), expected)
        assert np.array_equal(pixels(engine.generate(spec)), expected)
    finally:
        engine.close()


def test_tiny_random_ships_a_demo_lora_that_changes_the_image(tiny_settings):
    engine = Engine.load(tiny_settings, "cpu")
    try:
        assert LoraLibrary(tiny_settings.loras_dir).names() == [DEMO_LORA]
        plain = pixels(engine.generate(SPEC))
        demo = engine.generate(replace(SPEC, loras=(LoraUse(DEMO_LORA, 0.8),)))
        assert np.abs(pixels(demo) - plain).mean() > 2
    finally:
        engine.close()


# ------------------------------------------------------------------------------------------------ refusals

def _write(path, tensors, raw: bytes | None = None):
    if raw is not None:
        path.write_bytes(raw)
    else:
        save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("name, make, words", [
    ("text", lambda p, d: _write(p, None, b"not a lora at all, just text"), "not a safetensors file"),
    ("truncated", lambda p, d: _write(p, None, save(lora_layouts.kohya(d))[:3000]), "safetensors"),
    ("sdxl", lambda p, d: _write(p, {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(2, 8),
                                     "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.ones(8, 2)}),
     "not a LoRA for this FLUX model"),
    ("flux1", lambda p, d: _write(p, {"lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": torch.ones(2, 3072),
                                      "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight": torch.ones(3072, 2)}),
     "made for another model"),
    ("dora", lambda p, d: _write(p, {**lora_layouts.peft(d), "transformer.proj_out.lora_magnitude_vector": torch.ones(4)}),
     "DoRA"),
    ("half", lambda p, d: _write(p, {"lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": torch.ones(4, 32)}),
     "lacks its up matrix"),
    ("empty", lambda p, d: _write(p, {"something": torch.ones(1)}), "not a LoRA"),
])
def test_bad_files_are_refused_with_a_clear_message_and_change_nothing(tiny_engine, files, pipe, tmp_path, name, make,
                                                                       words):
    plain = pixels(tiny_engine.generate(SPEC))
    path = tmp_path / f"{name}.safetensors"
    make(path, pipe.transformer)
    with pytest.raises(EngineError) as info:
        tiny_engine.generate(replace(SPEC, loras=(use(path),)))
    assert words in str(info.value), str(info.value)
    assert np.array_equal(pixels(tiny_engine.generate(SPEC)), plain)


def test_a_lora_file_changed_since_the_job_was_made_is_refused(tiny_engine, pipe, tmp_path):
    path = lora_layouts.write(pipe, "kohya", tmp_path / "style.safetensors")
    made = tiny_engine.generate(replace(SPEC, loras=(use(path),))).spec.loras[0]
    lora_layouts.write(pipe, "peft", path)                                 # same name, other file
    with pytest.raises(EngineError, match="has changed since this job was made"):
        tiny_engine.generate(replace(SPEC, loras=(made,)))
    path.unlink()
    with pytest.raises(EngineError, match="does not exist"):
        tiny_engine.generate(replace(SPEC, loras=(made,)))


def test_unknown_lora_names_list_what_is_installed(tmp_path, pipe):
    lora_layouts.write(pipe, "kohya", tmp_path / "Anime Style.safetensors")
    lib = LoraLibrary(tmp_path)
    assert lib.find("anime style").name == "Anime Style"
    with pytest.raises(LoraError, match="There is no LoRA named 'cat'. Installed: Anime Style."):
        lib.find("cat")
    with pytest.raises(LoraError, match="is not a LoRA name"):
        lib.find("../secrets")
    with pytest.raises(LoraError, match="No LoRAs are installed"):
        LoraLibrary(tmp_path / "none").find("cat")
