"""Memory placement: budgets (cgroups, bad values), leaner profiles, and each profile's CPU seam."""
from pathlib import Path

import pytest
import torch

from engine.errors import EngineError
from engine.memory import (GiB, RAM_RESERVE, _tiles, apply_profile, detect_budgets, execution_device, host_ram,
                           leaner, make_plan, pipe_sizes)
from engine.precision import apply_precision
from engine.settings import EngineSettings
from engine.tiny import build_tiny_pipeline


def test_leaner_goes_down_to_streamed_then_none():
    assert leaner("resident") == "streamed"
    assert leaner("mixed") == "streamed"
    assert leaner("model-offload") == "streamed"
    assert leaner("streamed") is None
    with pytest.raises(ValueError, match="unknown memory profile"):
        leaner("turbo")


def _fake_machine(tmp: Path, *, total_gib: float, available_gib: float, cgroup: dict | None = None,
                  v1: dict | None = None) -> tuple[str, str]:
    """A /proc and /sys/fs/cgroup tree with the files the detector reads (the same formats as Linux's)."""
    proc, root = tmp / "proc", tmp / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal:       {int(total_gib * 2**20)} kB\n"
                                  f"MemFree:        1000 kB\nMemAvailable:   {int(available_gib * 2**20)} kB\n")
    lines = []
    if cgroup is not None:
        lines.append("0::/bench/x")
        folder = root / "bench" / "x"
        folder.mkdir(parents=True)
        for name, value in cgroup.items():
            (folder / name).write_text(value)
    if v1 is not None:
        lines.append("7:memory:/docker/abc")
        folder = root / "memory" / "docker" / "abc"
        folder.mkdir(parents=True)
        for name, value in v1.items():
            (folder / name).write_text(value)
    (proc / "self" / "cgroup").write_text("\n".join(lines) + "\n")
    return str(proc), str(root)


def test_host_ram_is_the_cgroup_room_not_mem_total(tmp_path):
    # A 16 GiB cgroup v2 limit on a 2 TiB machine, 3 GiB in use of which 1 GiB is page cache (reclaimable).
    proc, root = _fake_machine(tmp_path, total_gib=2048, available_gib=1900, cgroup={
        "memory.max": str(16 * GiB), "memory.current": str(3 * GiB),
        "memory.stat": f"anon {2 * GiB}\ninactive_file {GiB // 2}\nactive_file {GiB // 2}\n"})
    available, machine, how = host_ram(proc=proc, cgroup_root=root)
    assert available == 14 * GiB and machine == 16 * GiB and "cgroup" in how
    budgets = detect_budgets(EngineSettings(), "cpu", proc=proc, cgroup_root=root)
    assert budgets.ram == 14 * GiB - RAM_RESERVE and "cgroup" in budgets.note


def test_host_ram_reads_a_cgroup_v1_limit_and_ignores_max(tmp_path):
    proc, root = _fake_machine(tmp_path, total_gib=64, available_gib=60, v1={
        "memory.limit_in_bytes": str(24 * GiB), "memory.usage_in_bytes": str(4 * GiB),
        "memory.stat": "total_inactive_file 0\ntotal_active_file 0\n"})
    assert host_ram(proc=proc, cgroup_root=root)[:2] == (20 * GiB, 24 * GiB)
    proc2, root2 = _fake_machine(tmp_path / "b", total_gib=64, available_gib=60, cgroup={
        "memory.max": "max", "memory.current": str(GiB)})
    assert host_ram(proc=proc2, cgroup_root=root2)[:2] == (60 * GiB, 64 * GiB)   # no limit: MemAvailable


@pytest.mark.parametrize("key, value, match", [
    ("ram_budget_gib", 32.0, r"\[engine\] ram_budget_gib = 32 is larger than this machine: 16.0 GiB"),
    ("ram_budget_gib", -1.0, r"\[engine\] ram_budget_gib = -1.0: must be 0 \(measure it\) or a positive number"),
    ("vram_budget_gib", -2.0, r"\[engine\] vram_budget_gib = -2.0: must be 0"),
])
def test_bad_budgets_name_the_key(tmp_path, key, value, match):
    proc, root = _fake_machine(tmp_path, total_gib=16, available_gib=12)
    with pytest.raises(EngineError, match=match):
        detect_budgets(EngineSettings(**{key: value}), "cpu", proc=proc, cgroup_root=root)


def test_a_configured_ram_budget_is_used_as_is(tmp_path):
    proc, root = _fake_machine(tmp_path, total_gib=16, available_gib=12)
    budgets = detect_budgets(EngineSettings(ram_budget_gib=10), "cpu", proc=proc, cgroup_root=root)
    assert budgets.ram == 10 * GiB and "ram_budget_gib = 10" in budgets.note


def test_cpu_is_resident_and_model_offload_falls_back_with_a_reason(caplog):
    pipe = build_tiny_pipeline()
    apply_precision(pipe, "all-linear")
    settings = EngineSettings()
    budgets = detect_budgets(settings, "cpu")
    assert make_plan(settings, "cpu", pipe_sizes(pipe), budgets).profile == "resident"   # auto on the CPU
    plan = apply_profile(pipe, "model-offload", "cpu", settings)
    assert plan.profile == "resident" and "needs a CUDA device" in plan.reason
    assert "needs a CUDA device" in caplog.text
    assert execution_device(pipe, plan) == torch.device("cpu")
    with pytest.raises(ValueError, match="make_plan"):
        apply_profile(pipe, "auto", "cpu", settings)


def test_vae_tiling_setting_is_applied():
    pipe = build_tiny_pipeline()
    plan = apply_profile(pipe, "resident", "cpu", EngineSettings(vae_tiling="always"))
    assert plan.vae_tiling and pipe.vae.use_tiling
    pipe = build_tiny_pipeline()
    assert not apply_profile(pipe, "resident", "cpu", EngineSettings()).vae_tiling  # auto on CPU: no need


def test_auto_tiling_on_a_gpu_does_not_depend_on_the_plan():
    # Tiling changes pixels: an OOM retry on a leaner plan or a /show regenerate must give the same image.
    assert _tiles(EngineSettings(), "cuda:0") is True
    assert _tiles(EngineSettings(vae_tiling="never"), "cuda:0") is False


def test_switching_profiles_keeps_the_image():
    pipe = build_tiny_pipeline()
    apply_precision(pipe, "all-linear")
    run = lambda: pipe("a cat", height=64, width=64, num_inference_steps=2, max_sequence_length=32,  # noqa: E731
                       output_type="np", generator=torch.Generator("cpu").manual_seed(1)).images
    plan = apply_profile(pipe, "resident", "cpu", EngineSettings())
    expected = run()
    plan.release()
    plan = apply_profile(pipe, "streamed", "cpu", EngineSettings())
    assert plan.profile == "streamed" and (run() == expected).all()
    plan.release()
    plan = apply_profile(pipe, "resident", "cpu", EngineSettings())   # hooks gone: plain resident again
    assert (run() == expected).all()


def test_make_plan_keeps_the_configured_room_for_loras():
    """[engine] lora_reserve_rank reaches the planner: 0 keeps none (the plan of before), 64 keeps rank 64."""
    from engine.memory import Budgets
    from engine.planner import flux_dev_sizes

    budgets = Budgets(vram=int(5.5 * GiB), ram=int(13.5 * GiB), note="a 16/6 machine")
    plans = {rank: make_plan(EngineSettings(lora_reserve_rank=rank), "cuda:0", flux_dev_sizes(), budgets)
             for rank in (0, 64)}
    assert "LoRAs:" not in plans[0].describe() and "LoRAs: 0.67 GiB" in plans[64].describe()
    assert plans[64].placement.dit.count("gpu") < plans[0].placement.dit.count("gpu")


def test_make_plan_predicts_the_step_of_the_recipe_the_engine_runs():
    """The planner's compute is the recipe's: a compiled bf16 engine's resident step is the 0.1371 s an H200
    measured (kern), an eager one's ComputeCosts' bf16 eager figure; and a budgeted plan's choice of blocks follows."""
    from engine.memory import Budgets
    from engine.planner import Bandwidths, ComputeCosts, flux_dev_sizes

    big = Budgets(vram=80 * GiB, ram=200 * GiB, note="an H200")
    compiled = make_plan(EngineSettings(compute="bf16", compile=True), "cuda:0", flux_dev_sizes(), big)
    eager = make_plan(EngineSettings(compute="bf16", compile=False), "cuda:0", flux_dev_sizes(), big)
    assert compiled.profile == eager.profile == "resident"
    assert compiled.s_per_step == pytest.approx(0.1371) and "bf16 compute, compiled" in compiled.describe()
    assert eager.s_per_step == pytest.approx(ComputeCosts().step(4096 + 512, 19, 38))
    assert make_plan(EngineSettings(), "cpu", flux_dev_sizes(), big).s_per_step == 0.0     # no GPU figures on the CPU
    # fin2's budgeted row (fp8 compiled, 10 GiB, 55.3 GB/s): eager figures keep every double block on the GPU (the
    # plan that stalled at 1.15x its floor); the compiled recipe's streams some of them and keeps more single blocks.
    fin2 = Budgets(vram=10 * GiB, ram=100 * GiB, note="fin2", bandwidth=Bandwidths(h2d=55.3e9))
    dit = {c: make_plan(EngineSettings(profile="streamed", vram_budget_gib=10, compute="fp8", compile=c), "cuda:0",
                        flux_dev_sizes(), fin2).placement.dit for c in (False, True)}
    assert dit[False][:19].count("gpu") == 19 and dit[False][19:].count("gpu") == 10
    assert dit[True][:19].count("gpu") < 19 and dit[True][19:].count("gpu") > 10
