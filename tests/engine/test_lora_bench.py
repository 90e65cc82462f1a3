"""bench/lora_bench.py --tiny keeps running on CPU (issue 15's GPU figures come from the same script)."""
import importlib.util
import sys
from pathlib import Path


def test_tiny_lora_bench_times_loras_switches_and_an_upscale(tmp_path):
    path = Path(__file__).resolve().parents[2] / "bench" / "lora_bench.py"
    spec = importlib.util.spec_from_file_location("lora_bench", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["lora_bench"] = bench
    spec.loader.exec_module(bench)
    (row,) = bench.main(["--tiny", "--dir", str(tmp_path / "pb"), "--steps", "2", "--out", str(tmp_path / "l.jsonl")])
    assert {"none_s", "r16_s", "r64_s", "r16_cost", "r64_cost", "switch_max_s"} <= row.keys()
    assert len(row["switch_s"]) == 5 and row["switch_s"][3] < 0.05          # to no LoRA: only hooks come off
    assert row["lora_device_mib"]["r64"] > row["lora_device_mib"]["r16"] > 0 == row["lora_device_mib"]["none"]
    assert row["upscale_size"] == "512x512" and "upscale_error" not in row
    assert sorted(p.name for p in (tmp_path / "pb" / "loras").iterdir()) == ["random-r16.safetensors",
                                                                           "random-r64.safetensors"]
