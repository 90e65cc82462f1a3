"""Optional parts a test run must not skip: `FLUXBOT_TESTS_REQUIRE` names them (comma-separated import names; `.ci/run`
sets "ray"). Tests of an optional extra skip when it is not installed (`pytest.importorskip("ray")`), which is right
on a developer's machine without the extra but would let CI pass without running them: with the variable set, a
named module that does not import stops the run before any test (tests/conftest.py)."""
from __future__ import annotations

import importlib

REQUIRE_ENV = "FLUXBOT_TESTS_REQUIRE"


def required(value: str) -> list[str]:
    """The module names in the variable's value ("ray, web" -> ["ray", "web"])."""
    return [name.strip() for name in value.split(",") if name.strip()]


def missing(value: str) -> list[str]:
    """One line per required module that does not import, saying why."""
    problems = []
    for name in required(value):
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - ImportError, or an install broken in another way
            problems.append(f"{name}: {type(err).__name__}: {err}")
    return problems
