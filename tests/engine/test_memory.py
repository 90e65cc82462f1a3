"""Memory profiles: the auto decision, leaner profiles, and each profile's CPU seam."""
import pytest
import torch

from engine.memory import GiB, apply_profile, choose_profile, execution_device, leaner
from engine.precision import apply_precision
from engine.settings import EngineSettings
from engine.tiny import build_tiny_pipeline


def test_leaner_goes_down_to_streamed_then_none():
    assert leaner("resident") == "model-offload"
    assert leaner("model-offload") == "streamed"
    assert leaner("streamed") is None
    with pytest.raises(ValueError, match="unknown memory profile"):
        leaner("turbo")


@pytest.mark.parametrize("free_vram, host_ram, expected", [
    (80 * GiB, 64 * GiB, "resident"),      # H100: everything fits
    (6 * GiB, 64 * GiB, "streamed"),       # 6 GB card, enough RAM to pin
    (6 * GiB, 16 * GiB, "model-offload"),  # 6 GB card, 16 GB RAM: cannot pin 21 GiB
])
def test_auto_decision_from_free_vram_and_host_ram(free_vram, host_ram, expected):
    profile, reason = choose_profile("cuda:0", free_vram=free_vram, host_ram=host_ram, dit_bytes=int(11.1 * GiB),
                                     other_bytes=int(9.9 * GiB))
    assert profile == expected and "GiB" in reason


def test_cpu_is_resident_and_model_offload_falls_back_with_a_reason(caplog):
    assert choose_profile("cpu", free_vram=0, host_ram=8 * GiB, dit_bytes=1, other_bytes=1)[0] == "resident"
    pipe = build_tiny_pipeline()
    apply_precision(pipe, "all-linear")
    plan = apply_profile(pipe, "model-offload", "cpu", EngineSettings())
    assert plan.profile == "resident" and "needs a CUDA device" in plan.reason
    assert "needs a CUDA device" in caplog.text
    assert execution_device(pipe, plan) == torch.device("cpu")
    with pytest.raises(ValueError, match="resolve_profile"):
        apply_profile(pipe, "auto", "cpu", EngineSettings())


def test_vae_tiling_setting_is_applied():
    pipe = build_tiny_pipeline()
    plan = apply_profile(pipe, "resident", "cpu", EngineSettings(vae_tiling="always"))
    assert plan.vae_tiling and pipe.vae.use_tiling
    pipe = build_tiny_pipeline()
    assert not apply_profile(pipe, "resident", "cpu", EngineSettings()).vae_tiling  # auto on CPU: no need


@pytest.mark.parametrize("profile", ["resident", "model-offload", "streamed"])
def test_auto_tiling_on_a_gpu_does_not_depend_on_the_profile(profile):
    # Tiling changes pixels: an OOM retry on a leaner profile or a /show regenerate must give the same image.
    from engine.memory import MemoryPlan, _decide_vae_tiling

    plan = MemoryPlan(profile=profile, reason="", device="cuda:0", vae_tiling=False)
    assert _decide_vae_tiling(EngineSettings(), plan) is True
    assert _decide_vae_tiling(EngineSettings(vae_tiling="never"), plan) is False


def test_switching_profiles_keeps_the_image():
    pipe = build_tiny_pipeline()
    apply_precision(pipe, "all-linear")
    run = lambda: pipe("a cat", height=64, width=64, num_inference_steps=2, max_sequence_length=32,  # noqa: E731
                       output_type="np", generator=torch.Generator("cpu").manual_seed(1)).images
    plan = apply_profile(pipe, "resident", "cpu", EngineSettings())
    expected = run()
    plan.release()
    plan = apply_profile(pipe, "streamed", "cpu", EngineSettings())
    assert (run() == expected).all()
    plan.release()
    plan = apply_profile(pipe, "resident", "cpu", EngineSettings())   # hooks gone: plain resident again
    assert (run() == expected).all()
