"""Top-level fixtures: the tiny offline FLUX pipeline, built once per test session."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from engine.settings import EngineSettings
from tests.support.configs import tiny_engine_settings

log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """`<models_dir>/tiny-random`: the tiny pipeline saved by engine/tiny.py (built once, ~2 s)."""
    from engine.tiny import ensure_tiny

    return ensure_tiny(tmp_path_factory.mktemp("models"))


@pytest.fixture
def tiny_settings(tiny_model_dir, tmp_path) -> EngineSettings:
    """EngineSettings for tiny-random on the CPU, images written under this test's tmp_path."""
    return tiny_engine_settings(tiny_model_dir.parent, images_dir=str(tmp_path / "images"),
                                loras_dir=str(tmp_path / "loras"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    """One loaded tiny-random Engine shared by the session (do not close it or change its profile)."""
    from tests.support.engines import loaded_tiny_engine  # torch: only when a test needs the engine

    with loaded_tiny_engine(tiny_model_dir.parent) as engine:
        yield engine


def with_settings(settings: EngineSettings, **changes) -> EngineSettings:
    """A copy of `settings` with some fields changed (frozen dataclass)."""
    return replace(settings, **changes)
