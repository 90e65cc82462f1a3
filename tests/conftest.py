"""Top-level fixtures: the tiny offline FLUX pipeline, built once per test session."""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import pytest

from engine.settings import EngineSettings
from tests.support import required_modules
from tests.support.configs import tiny_engine_settings

log = logging.getLogger(__name__)


def pytest_sessionstart(session):
    """A run that must test an optional part (`FLUXBOT_TESTS_REQUIRE=ray`, set by .ci/run) stops at once when that part
    does not import, instead of skipping its tests (tests/support/required_modules.py)."""
    problems = required_modules.missing(os.environ.get(required_modules.REQUIRE_ENV, ""))
    if problems:
        pytest.exit(f"{required_modules.REQUIRE_ENV} names modules that do not import, so their tests would be "
                    f"skipped: {'; '.join(problems)}", returncode=pytest.ExitCode.USAGE_ERROR)


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
