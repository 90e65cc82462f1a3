"""`FileFlag`: a `threading.Event` that two processes of one machine share through a file, for test seams that run
in another process than the test (an engine actor of a local Ray instance: tests/support/backends.py `RemoteFaults`).

A seam paused inside a job holds the actor's one engine thread, so the test cannot reach it by a request to the
actor (`RayEngine.call` waits behind the job); it sees the pause, and releases it, through the file system instead.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

POLL_S = 0.05


@dataclass(frozen=True)
class FileFlag:
    """Set once its file exists (`set`, `is_set`, `wait(timeout)`, as a `threading.Event`; never cleared)."""
    path: Path

    def set(self) -> None:
        self.path.touch()

    def is_set(self) -> bool:
        return self.path.exists()

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True
