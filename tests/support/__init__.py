"""Test helpers shared by tests/engine, tests/bot and tests/e2e."""
