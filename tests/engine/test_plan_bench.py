"""bench/plan_bench.py --tiny keeps running on CPU (the GPU table of issue 12 comes from the same script)."""
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest


def test_tiny_plan_bench_writes_real_layouts_loads_through_the_cache_and_times_an_image(tmp_path, capsys):
    path = Path(__file__).resolve().parents[2] / "bench" / "plan_bench.py"
    spec = importlib.util.spec_from_file_location("plan_bench", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["plan_bench"] = bench  # dataclasses look their module up
    spec.loader.exec_module(bench)
    rows = bench.main(["--tiny", "--dir", str(tmp_path / "pb"), "--out", str(tmp_path / "plan.jsonl")])
    head, by = rows[0], {r["row"]: r for r in rows[1:]}
    # 1. The files: a BFL single-file DiT and a base folder with T5 in two shards and its index.
    assert head["files"]["dit_tensors"] > 0 and (tmp_path / "pb" / "flux1-dev.safetensors").exists()
    index = json.loads((tmp_path / "pb" / "FLUX.1-dev" / "text_encoder_2" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 2
    assert head["anchors"]["pagecache_copy_GBps"] > 0
    # the DiT's sha256 was computed while writing: the sidecar engine/models.py reads matches the file
    dit = tmp_path / "pb" / "flux1-dev.safetensors"
    sidecar = json.loads((tmp_path / "pb" / "flux1-dev.safetensors.sha256").read_text())
    assert sidecar["sha256"] == hashlib.sha256(dit.read_bytes()).hexdigest() and sidecar["size"] == dit.stat().st_size
    # 2. The first start built the fp8 cache; the row loaded and made an image, with the plan's prediction.
    assert list((tmp_path / "pb" / ".fluxbot-cache").glob("flux1-dev.all-linear.*.safetensors"))
    assert by["first-start"]["load_s"] > 0
    auto = by["auto"]
    assert auto["image_s"] > 0 and auto["s_per_step"] > 0 and auto["image_std"] > 0
    assert auto["mem_end"]["VmHWM"] > 0
    assert "auto" in capsys.readouterr().out
    assert len((tmp_path / "plan.jsonl").read_text().splitlines()) == 4  # head, two rows, the final list


def test_the_floor_counts_the_t5_blocks_read_from_disk_per_new_prompt():
    """Run 4's 16/6 row read 3.86 GB of T5 from disk per prompt (encode 2.55 s); its floor must include it:
    4.06 s of DiT + 3.86 GB / 1.586 GB/s (cold disk) + 0.16 s decode = 6.65 s (the old floor said 4.39)."""
    path = Path(__file__).resolve().parents[2] / "bench" / "plan_bench.py"
    spec = importlib.util.spec_from_file_location("plan_bench", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["plan_bench"] = bench
    spec.loader.exec_module(bench)
    add_floors = bench.add_floors
    resident = {"row": "resident", "s_per_step": 0.2031, "encode_s": 0.032, "decode_s": 0.157, "image_s": 4.257,
                "steps": 20, "moved": {"dit_pinned": 0, "dit_disk": 0, "t5_pinned": 0, "t5_disk": 0,
                                       "disk_read_per_step": 0}}
    row = {"row": "16/6", "s_per_step": 0.2009, "image_s": 6.782, "steps": 20,
           "moved": {"dit_pinned": 8438984704, "dit_disk": 0, "t5_pinned": 5402497024, "t5_disk": 3858923520,
                     "disk_read_per_step": 0}}
    add_floors([resident, row], {"h2d_GBps": 55.484, "disk_cold_mmap_GBps": 1.586, "pagecache_copy_GBps": 39.899})
    assert row["floor_s"] == pytest.approx(4.062 + 3.8589 / 1.586 + 0.157, abs=0.01)
    assert row["x_floor"] == pytest.approx(1.02, abs=0.005)


def test_only_runs_the_named_rows_in_the_order_given_after_the_first_start():
    """A short device run puts the rows that failed last time first (the deadline skips the rest), and a typo is
    refused before 35 GB of files are written."""
    path = Path(__file__).resolve().parents[2] / "bench" / "plan_bench.py"
    spec = importlib.util.spec_from_file_location("plan_bench", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["plan_bench"] = bench
    spec.loader.exec_module(bench)
    assert [r.name for r in bench.chosen_rows("resident,16/12,24/2.5,16/6")] == [
        "first-start", "resident", "16/12", "24/2.5", "16/6"]
    assert [r.name for r in bench.chosen_rows("")] == [r.name for r in bench.ROWS]
    with pytest.raises(SystemExit, match="16/10"):
        bench.chosen_rows("resident,16/10")


def test_each_row_reports_how_far_its_image_is_from_residents(tmp_path):
    """Run 4/5's mixed rows were timed on NaN (flat) images and nobody saw it: every row after resident now says
    how far its pixels are from resident's, and the docs table shows a flat image as such."""
    import numpy as np

    path = Path(__file__).resolve().parents[2] / "bench" / "plan_bench.py"
    spec = importlib.util.spec_from_file_location("plan_bench", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["plan_bench"] = bench
    spec.loader.exec_module(bench)
    ref = np.random.default_rng(0).integers(0, 250, (8, 8, 3), dtype=np.uint8)
    assert bench.compare_with_reference(ref, tmp_path, "resident") == {}
    assert bench.compare_with_reference(ref, tmp_path, "16/12") == {
        "vs_resident_max": 0, "vs_resident_mean": 0.0, "pixels_ok": True}
    off = bench.compare_with_reference(ref + 3, tmp_path, "16/8")
    assert off["vs_resident_max"] == 3 and off["pixels_ok"] is False
    assert "flat image" in bench._pixels({"image_std": 0.0})
    assert "differs" in bench._pixels({"image_std": 1.9, **off})
