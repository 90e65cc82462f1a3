"""bench/step_probe.py (issue 13's probe: where a compiled step's time goes, CUDA graphs, whole images through the
Engine) keeps running: its tiny CPU mode runs the same code paths the GPU run does, minus the graphs and the profile."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _rows(tmp_path, *args) -> list[dict]:
    out = tmp_path / "rows.jsonl"
    subprocess.run([sys.executable, str(ROOT / "bench" / "step_probe.py"), "--tiny", "--out", str(out), *args],
                   check=True, cwd=ROOT, capture_output=True, timeout=600)
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_dit_probe_times_steps_and_forwards(tmp_path):
    rows = _rows(tmp_path, "--dit", "fp8:row-fast-tq")
    by = {r["part"]: r for r in rows}
    assert by["built"]["recipe"] == "fp8:row-fast-tq" and by["built"]["device"] == "cpu"
    assert by["steps"]["s_per_step"] > 0 and by["steps"]["loop_s_per_step"] > 0 and by["steps"]["graphs"] is False
    assert by["forward"]["synced_s"] > 0 and by["forward"]["chained_s"] > 0
    assert "graphs" not in by            # the CPU never records CUDA graphs


def test_engine_probe_makes_whole_images_and_times_the_decode(tmp_path):
    rows = _rows(tmp_path, "--engine", "--images", "1")
    images = [r for r in rows if r["part"] == "engine-image"]
    assert len(images) == 2 and all(r["image_s"] > 0 and r["denoise"] > 0 for r in images)
    assert not any(r["graphs"] for r in images)     # CPU engine: no graphs installed
    assert {r["variant"] for r in rows if r["part"] == "decode"} == {"as-is", "channels-last"}


def test_the_bf16_copy_probe_checks_its_latents_against_the_upcast(tmp_path):
    rows = _rows(tmp_path, "--dit", "bf16-copy", "--batches", "1")
    copy = next(r for r in rows if r["part"] == "bf16-copy")
    assert copy["copy_gib"] >= 0 and copy["same_latents_as_upcast"] is True and copy["max_abs_diff"] == 0.0
    assert any(r["part"] == "steps" and r["recipe"] == "bf16-copy" for r in rows)
