"""Budget-respecting loading: the DiT's fp8 cache file, memory-mapped weights, and what they cost in RAM.

The tiny model is loaded through the cache and must give the same pixels as loading everything into RAM
with diffusers; conversion of a bf16 BFL checkpoint keeps the process's peak RSS near its largest tensor
(measured in a child process); mapped weights cost page cache, not anonymous memory.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.dit_cache import CACHE_DIR
from engine.mmap_weights import is_file_backed
from engine.models import load_dit, load_t5
from engine.pipeline import Engine
from engine.spec import JobSpec
from tests.engine.test_models import write_bfl_checkpoint

SMALL = dict(steps=2, width=256, height=256)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    """A private copy of the tiny pipeline folder (its cache is this test's own)."""
    dst = tmp_path / "tiny-copy"
    shutil.copytree(tiny_model_dir, dst, ignore=shutil.ignore_patterns(CACHE_DIR))
    return dst


def caches(folder: Path) -> list[Path]:
    return sorted((folder / CACHE_DIR).glob("*.safetensors")) if (folder / CACHE_DIR).exists() else []


def dit_files(folder: Path) -> list[Path]:
    return sorted((folder / "transformer").glob("*.safetensors"))


def test_first_start_writes_the_cache_and_later_starts_map_it(model_copy):
    # 1. First start: one cache file beside the DiT, no temp file left.
    dit = load_dit(dit_files(model_copy), model_copy / "transformer", "all-linear")
    [cache] = caches(model_copy / "transformer")
    assert ".all-linear." in cache.name
    assert not [p for p in (model_copy / "transformer" / CACHE_DIR).iterdir() if p.name.endswith(".tmp")]
    stamp = cache.stat().st_mtime_ns
    # 2. Later start: the same file, mapped, not rewritten; every parameter is a view of it.
    again = load_dit(dit_files(model_copy), model_copy / "transformer", "all-linear")
    assert caches(model_copy / "transformer") == [cache] and cache.stat().st_mtime_ns == stamp
    assert all(is_file_backed(p) for p in again.parameters())
    assert not any(is_file_backed(p) for p in [torch.ones(4)])
    for (n, a), (_, b) in zip(dit.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), n


def test_pixels_through_the_cache_equal_loading_everything_into_ram(model_copy, tiny_settings):
    """The Engine's images with cache-mapped weights equal those of diffusers' plain in-RAM load + fp8 cast (the
    engine `Engine.from_pipeline` makes around it: the steps `Engine.load` takes after loading)."""
    from diffusers import FluxPipeline

    settings = replace(tiny_settings, model=str(model_copy))
    engine = Engine.load(settings, "cpu")
    plain = FluxPipeline.from_pretrained(model_copy, dtype=torch.bfloat16, local_files_only=True)
    before = Engine.from_pipeline(settings, "cpu", plain, "plain")
    assert before.recipe == engine.recipe and before.precision == engine.precision
    try:
        for seed in (3, 4):
            a = engine.generate(JobSpec("a red house", seed=seed, **SMALL)).images[0]
            b = before.generate(JobSpec("a red house", seed=seed, **SMALL)).images[0]
            assert np.array_equal(np.asarray(a), np.asarray(b))
    finally:
        engine.close()
        before.close()


def test_a_changed_source_or_fp8_mode_builds_a_new_cache_and_removes_the_old(model_copy):
    files, config = dit_files(model_copy), model_copy / "transformer"
    load_dit(files, config, "all-linear")
    [first] = caches(config)
    # 1. Another fp8 mode: another file, the old one removed (one cache per model).
    load_dit(files, config, "diffusers-default")
    [second] = caches(config)
    assert second != first and ".diffusers-default." in second.name
    # 2. The source changed on disk (new mtime): rebuilt under a new key; a conversion killed midway left its
    #    temp file (gigabytes for FLUX), which goes too.
    os.utime(files[0], ns=(files[0].stat().st_atime_ns, files[0].stat().st_mtime_ns + 10**9))
    killed = config / CACHE_DIR / f".{second.name}.4242.tmp"
    killed.write_bytes(b"half a cache")
    load_dit(files, config, "diffusers-default")
    [third] = caches(config)
    assert third != second and not killed.exists()


def test_bfl_single_file_is_converted_through_the_cache(tiny_model_dir, tmp_path):
    ckpt = write_bfl_checkpoint(tiny_model_dir, tmp_path / "majic.v1.safetensors", prefix="model.diffusion_model.")
    dit = load_dit([ckpt], tiny_model_dir / "transformer", "all-linear")
    [cache] = caches(tmp_path)
    assert cache.name.startswith("majic_v1.all-linear.")
    ref = load_dit(dit_files(tiny_model_dir), tiny_model_dir / "transformer", "all-linear")
    assert all(is_file_backed(p) for p in dit.parameters())
    ours, theirs = dit.state_dict(), ref.state_dict()
    assert set(ours) == set(theirs)
    for k in ours:
        assert ours[k].dtype == theirs[k].dtype and torch.equal(ours[k].view(torch.uint8), theirs[k].view(torch.uint8)), k


def test_a_folder_that_cannot_hold_the_cache_loads_into_ram_instead(model_copy, caplog):
    (model_copy / "transformer" / CACHE_DIR).write_text("not a folder")  # mkdir fails, as in a read-only folder
    dit = load_dit(dit_files(model_copy), model_copy / "transformer", "all-linear")
    assert not any(is_file_backed(p) for p in dit.parameters())
    assert "cannot write the fp8 cache" in caplog.text
    ref = load_dit(dit_files(model_copy), model_copy / "transformer", "all-linear")
    for (n, a), (_, b) in zip(dit.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), n


def test_t5_is_mapped_from_its_shards_and_equals_the_transformers_load(tiny_model_dir):
    from transformers import T5EncoderModel

    t5 = load_t5(tiny_model_dir / "text_encoder_2")
    ref = T5EncoderModel.from_pretrained(tiny_model_dir / "text_encoder_2", dtype=torch.float32)
    assert all(is_file_backed(p) for p in t5.parameters())
    assert t5.encoder.embed_tokens.weight is t5.shared.weight  # the tied embedding points at the one read
    ids = torch.tensor([[5, 6, 7, 1]])
    with torch.inference_mode():
        assert torch.equal(t5(ids).last_hidden_state, ref.eval()(ids).last_hidden_state)


# ------------------------------------------------------------------------------------------- child processes

WIDE = dict(patch_size=1, in_channels=64, num_layers=4, num_single_layers=16, attention_head_dim=64,
            num_attention_heads=8, joint_attention_dim=512, pooled_projection_dim=256, guidance_embeds=True,
            axes_dims_rope=[16, 24, 24])


def _run_child(code: str, tmp_path: Path, *, limit_bytes: int | None = None) -> dict:
    """Run `code` in a fresh Python (limits apply to it alone); it prints one JSON line last."""
    prelude = textwrap.dedent(f"""
        import json, os, resource, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        if {limit_bytes!r} is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like ENOSPC
            resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes!r}, {limit_bytes!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _write_wide_bfl(tmp_path: Path) -> tuple[Path, Path]:
    """A bf16 BFL single file of a wider DiT (~0.2 GB, largest tensor 3.6 MB) and its config folder."""
    code = f"""
        import torch
        from diffusers import FluxTransformer2DModel
        from safetensors.torch import save_file
        from engine.bfl_keys import diffusers_to_bfl
        torch.manual_seed(0)
        dit = FluxTransformer2DModel(**{WIDE!r}).to(torch.bfloat16)
        dit.save_config("config")
        bfl = diffusers_to_bfl(dit.state_dict(), dit.config)
        save_file({{k: v.contiguous() for k, v in bfl.items()}}, "wide.safetensors")
        print(json.dumps({{"largest": max(v.numel() * v.element_size() for v in bfl.values()),
                          "total": sum(v.numel() * v.element_size() for v in bfl.values())}}))
    """
    sizes = _run_child(code, tmp_path)
    (tmp_path / "sizes.json").write_text(json.dumps(sizes))
    return tmp_path / "wide.safetensors", tmp_path / "config"


def test_conversion_peak_rss_stays_near_the_largest_tensor_and_mapped_weights_cost_no_anonymous_ram(tmp_path):
    ckpt, config = _write_wide_bfl(tmp_path)
    sizes = json.loads((tmp_path / "sizes.json").read_text())
    code = f"""
        import torch
        from diffusers import FluxTransformer2DModel
        from engine.mmap_weights import memory_status
        from engine.models import load_dit
        from pathlib import Path
        with torch.device("meta"):
            FluxTransformer2DModel(**{WIDE!r})  # warm every import and lazy init before measuring
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS (VmHWM) to the current RSS
        base = memory_status()
        dit = load_dit([Path("wide.safetensors")], Path("config"), "all-linear")
        converted = memory_status()
        del dit
        again = load_dit([Path("wide.safetensors")], Path("config"), "all-linear")
        mapped = memory_status()
        touched = sum(float(p.float().sum()) for p in again.parameters())  # fault every page in
        after = memory_status()
        print(json.dumps(dict(base=base, converted=converted, mapped=mapped, after=after)))
    """
    m = _run_child(code, tmp_path)
    peak_growth = m["converted"]["VmHWM"] - m["base"]["VmRSS"]
    largest, total = sizes["largest"], sizes["total"]
    # 1. Conversion: the peak grew by a few tensors, far below the model (all of it was written to disk).
    assert total > 150e6 and largest < 4e6
    assert peak_growth < 4 * largest + 24e6, (peak_growth, largest, total)
    assert peak_growth < total / 3
    # 2. Reading every mapped weight: file-backed pages grow by about the fp8 model, anonymous memory does not.
    fp8_size = total / 2
    assert m["after"]["RssFile"] - m["mapped"]["RssFile"] > 0.8 * fp8_size
    assert m["after"]["RssAnon"] - m["mapped"]["RssAnon"] < 0.1 * fp8_size


def test_a_full_disk_gives_a_clear_error_and_leaves_no_file(tmp_path):
    ckpt, config = _write_wide_bfl(tmp_path)
    code = """
        from pathlib import Path
        from engine.errors import EngineError
        from engine.models import load_dit
        try:
            load_dit([Path("wide.safetensors")], Path("config"), "all-linear")
            print(json.dumps({"error": None}))
        except EngineError as e:
            print(json.dumps({"error": str(e)}))
    """
    out = _run_child(code, tmp_path, limit_bytes=20 << 20)  # room for 20 MiB: the cache needs ~0.1 GiB
    assert out["error"] and "not enough disk space" in out["error"] and "GiB needed" in out["error"]
    assert "Free space there" in out["error"]
    assert not list((tmp_path / CACHE_DIR).glob("*.safetensors")) and not list((tmp_path / CACHE_DIR).glob("*.tmp"))
    assert not list((tmp_path / CACHE_DIR).glob(".*.tmp"))


def test_a_bf16_diffusers_folder_with_fp8_off_is_mapped_as_it_is(tiny_model_dir, tmp_path):
    """Shards that already hold the storage dtypes need no cache: the DiT maps them directly."""
    from diffusers import FluxTransformer2DModel

    folder = tmp_path / "transformer"
    FluxTransformer2DModel.from_pretrained(tiny_model_dir / "transformer", dtype=torch.bfloat16).save_pretrained(folder)
    dit = load_dit(sorted(folder.glob("*.safetensors")), folder, "off")
    assert not (folder / CACHE_DIR).exists()
    assert all(is_file_backed(p) for p in dit.parameters())
    ref = load_dit(dit_files(tiny_model_dir), tiny_model_dir / "transformer", "off")  # fp32 shards: via a cache
    for (n, a), (_, b) in zip(dit.state_dict().items(), ref.state_dict().items()):
        assert a.dtype == b.dtype == torch.bfloat16 and torch.equal(a, b), n
