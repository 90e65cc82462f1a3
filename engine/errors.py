"""Errors the engine raises; each message says what a user or owner can do about it."""
from __future__ import annotations


class EngineError(Exception):
    """A job could not run. `str(err)` is safe to show to the user who asked."""


class ModelNotFoundError(EngineError):
    """A configured model path is missing or is not what it should be."""


class EngineOutOfMemory(EngineError):
    """CUDA ran out of memory; `suggested_profile` is the next leaner profile, or None."""

    def __init__(self, message: str, *, profile: str, suggested_profile: str | None):
        super().__init__(message)
        self.profile = profile
        self.suggested_profile = suggested_profile


class EngineLost(EngineError):
    """The engine's device went away mid-job (a Ray actor or its node died), not through the job's fault: the
    worker puts the job back at the head of its owner's turn instead of failing it (engine/worker.py)."""
