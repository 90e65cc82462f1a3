"""bench/fast_bench.py (issue 13's compute bench, `engine_bench.py --fast`) keeps running: its tiny CPU mode runs the
parts a GPU run does, with `--only` picking them, and the rows carry the figures the GPU run is made for."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = "fluxbot-fp8.row-fast-tq-compile"   # the engine's default recipe on an H200 (fp8 row-fast-tq, compiled)


@pytest.mark.slow
def test_the_drift_references_the_default_kernel_and_the_streamed_plans_with_it(tmp_path):
    out = tmp_path / "fast.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "engine_bench.py"), "--fast", "--tiny", "--only",
                    "diffusers-bf16-eager,fluxbot-bf16-eager,row-fast-tq,streamed", "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True, timeout=600)
    rows = json.loads(out.read_text())
    assert not [r for r in rows if "error" in r or "skipped" in r]
    # 1. Only the parts asked for ran: the two references, the default kernel resident, then the two plans.
    assert [(r["recipe"], r.get("plan")) for r in rows] == [
        ("diffusers-bf16-eager", None), ("fluxbot-bf16-eager", "resident"), (DEFAULT, "resident"),
        (DEFAULT, "streamed"), (DEFAULT, "budgeted")]
    anchor, reference, default, streamed, budgeted = rows
    # 2. A whole image each, and the drift of the latents and of the decoded image against both references.
    assert all(r["image_s"] > 0 and r["finite"] for r in (anchor, reference, default))
    assert set(reference["drift"]) == {"vs_bf16_weights"}
    assert set(default["drift"]) == {"vs_fp8_storage", "vs_bf16_weights"}
    for figures in [reference["drift"]["vs_bf16_weights"], *default["drift"].values()]:
        assert set(figures) == {"latent_rel_l2", "image_rel_l2", "image_psnr_db"}
        assert figures["latent_rel_l2"] > 0
    assert default["kernel"] == "row-fast-tq" and default["compiled"] and default["fp8_linears"] > 0
    # 3. The plans run the default kernel compiled (not the fastest row: eager bf16 on the CPU), against their floor
    #    max(its resident s/step, streamed bytes / bandwidth) (no bandwidth on the CPU: its s/step).
    for plan in (streamed, budgeted):
        assert (plan["compute"], plan["kernel"], plan["compiled"]) == ("fp8", "row-fast-tq", True)
        assert plan["floor_s_per_step"] == default["s_per_step"]
        assert plan["x_floor"] == pytest.approx(plan["s_per_step"] / plan["floor_s_per_step"], abs=0.01)
