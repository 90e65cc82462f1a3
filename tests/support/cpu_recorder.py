"""`CpuRecorder`: engine/cuda_graphs.py's `Recorder` for CPU tensors, so GraphedForward's bookkeeping runs in the tests.

CUDA graphs need a GPU. This stand-in does what a graph does, seen from outside: recording keeps the forward (which
reads the static input buffers GraphedForward made) and an output tensor whose contents are undefined until the first
replay (NaN here, as a captured graph has not run its kernels yet); a replay runs the forward again on those buffers
and copies the result into that same output tensor. So a replay that forgot to copy the new inputs in, or an output
handed out without a copy, shows up as wrong numbers, as it would on a GPU. What it cannot show: a stale recording
(a replay here always runs today's module, hooks included) — the device bench covers the real graphs.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from engine.cuda_graphs import Recording


class CpuRecorder:
    """Records calls whose tensors are all on the CPU. `working_bytes`: what `measured` reports for every eager call;
    `fail`: an exception `record` raises (an op that cannot be recorded)."""

    def __init__(self, working_bytes: int = 3 * 2**20, fail: Exception | None = None):
        self.working_bytes = working_bytes
        self.fail = fail
        self.recordings = 0        # record() calls, failed ones included
        self.releases = 0

    def device_of(self, kwargs: dict[str, Any]) -> torch.device | None:
        devices = {v.device for v in kwargs.values() if isinstance(v, torch.Tensor)}
        return devices.pop() if devices == {torch.device("cpu")} else None

    def measured(self, device: torch.device, call: Callable[[], Any]) -> tuple[Any, int]:
        return call(), self.working_bytes

    def record(self, device: torch.device, forward: Callable[[], torch.Tensor]) -> Recording:
        self.recordings += 1
        if self.fail is not None:
            raise self.fail
        output = torch.full_like(forward(), float("nan"))

        def replay() -> None:
            output.copy_(forward())

        return Recording(replay=replay, output=output, working_bytes=self.working_bytes)

    def release(self) -> None:
        self.releases += 1
