"""bench/engine_bench.py --tiny keeps running on CPU (the GPU numbers come from the same script)."""
import importlib.util
import sys
from pathlib import Path


def test_tiny_bench_runs_fluxbot_profiles_and_prints_a_table(capsys):
    path = Path(__file__).resolve().parents[2] / "bench" / "engine_bench.py"
    spec = importlib.util.spec_from_file_location("engine_bench", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["engine_bench"] = bench  # dataclasses look their module up
    spec.loader.exec_module(bench)
    rows = bench.main(["--tiny", "--all", "--only", "check,pipe:fluxbot-streamed,pipe:fluxbot-resident"])
    by = {r["recipe"]: r for r in rows}
    assert by["check"]["max_abs_diff"] == 0.0 and by["check"]["block_params_on_device_after"] == 0
    assert by["pipe:fluxbot-streamed"]["finite"] and by["pipe:fluxbot-resident"]["finite"]
    assert "pipe:fluxbot-streamed" in capsys.readouterr().out
