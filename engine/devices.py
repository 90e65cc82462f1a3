"""`[engine] devices` made concrete: which devices get a worker.

A leaf module (it imports nothing of the project), so the worker pool, the engine process and the bot can all
ask it without importing each other.
"""
from __future__ import annotations

import logging
from typing import Sequence

log = logging.getLogger(__name__)


def resolve_devices(devices: Sequence[str]) -> list[str]:
    """["auto"] (or nothing) is every CUDA GPU, else ["cpu"]; any other list is kept as it is."""
    if list(devices) != ["auto"] and devices:
        return list(devices)
    import torch  # lazy: the queue, the bot's start-up and their tests stay free of torch until a device is asked for

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    found = [f"cuda:{i}" for i in range(count)] or ["cpu"]
    log.info("[engine] devices = ['auto'] -> %s", found)
    return found
