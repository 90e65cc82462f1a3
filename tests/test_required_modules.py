"""CI does not pass by skipping the Ray tests: `.ci/run` sets `FLUXBOT_TESTS_REQUIRE=ray`, and a run with it stops
before any test when Ray does not import (tests/conftest.py, tests/support/required_modules.py). Each case runs pytest
in a child process where `import ray` fails, as on a machine whose Ray install is missing or broken."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.required_modules import REQUIRE_ENV

ROOT = Path(__file__).resolve().parents[1]
RAY_TEST = "tests/bot/test_doctor_ray.py"  # skipped as a whole (importorskip) when Ray does not import
# pytest in a child where `import ray` raises ImportError (a None entry in sys.modules), on one Ray test module.
WITHOUT_RAY = ("import sys; sys.modules['ray'] = None; import pytest; "
               f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', {RAY_TEST!r}]))")


def run_without_ray(require: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (REQUIRE_ENV, "PYTEST_ADDOPTS")}
    if require is not None:
        env[REQUIRE_ENV] = require
    return subprocess.run([sys.executable, "-c", WITHOUT_RAY], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_without_the_variable_a_missing_ray_only_skips_its_tests():
    # What a developer without the extra gets, and what CI got before: a green run that tested nothing of Ray.
    run = run_without_ray(None)
    # 5: pytest's "no tests ran" (the module is all it was given); in the whole suite the run is green (0).
    assert run.returncode in (0, 5) and "1 skipped" in run.stdout, run.stdout + run.stderr


def test_a_run_that_requires_ray_stops_when_ray_does_not_import():
    run = run_without_ray("ray")
    out = run.stdout + run.stderr
    assert run.returncode == 4, out  # pytest's usage error: no test ran, nothing was skipped
    assert f"{REQUIRE_ENV} names modules that do not import" in out and re.search(r"ray: \w*Error", out), out
    assert "skipped" not in out.replace("would be skipped", ""), out


def test_ci_requires_ray_before_it_runs_the_tests():
    script = (ROOT / ".ci" / "run").read_text()
    export = re.search(rf"^export {REQUIRE_ENV}=(\S+)$", script, re.M)
    assert export is not None and "ray" in export.group(1).split(","), "the CI script does not require Ray"
    assert export.start() < script.index("python -m pytest"), "the requirement must be set before the tests run"
