"""`[engine] devices` made concrete (engine/devices.py)."""
from __future__ import annotations

import torch

from engine.devices import resolve_devices


def test_a_list_of_devices_is_kept_and_auto_is_every_gpu_else_the_cpu():
    assert resolve_devices(["cpu", "cpu"]) == ["cpu", "cpu"]
    assert resolve_devices(["cuda:1"]) == ["cuda:1"]
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    expected = [f"cuda:{i}" for i in range(gpus)] or ["cpu"]
    assert resolve_devices(["auto"]) == expected and resolve_devices([]) == expected
