"""The engine backend an end-to-end test runs its bot on, one place for both: `local` (the workers in the bot's
process, over the engine the test shares, as `python -m bot run` with `[engine] backend = "local"`) and `ray`
(`[engine] backend = "ray"`: the bot's `RayWorkerPool` on a local Ray instance with one logical GPU, its one worker's
engine an `EngineActor` running the tiny model on the CPU).

A test written for local workers runs on both by
- taking the module-scoped `backend` fixture (directly or through its bot fixture) and decorating the test with
  `@on_both_backends` (tests without it run on `local` only);
- building its bot with `build_bot(backend.configure(config), engine_loader=await backend.loader(engine, gate=…,
  step_s=…, failing=…), close_engines=False)`.

With `local`, the loader returns `engine` itself (or `SlowSteps`/`Failing` over it), as the e2e tests always did. With
`ray`, one Ray instance serves the whole module (ray.init once: ~5 s on 2 cores) and one engine actor with `engine`'s
settings serves every bot of the module (starting one takes ~12 s: a process importing torch and diffusers), as
`tiny_engine` serves the local bots: each bot's pool reads the instance's one node, makes its one slot and gets that
actor's `RayEngine` from the loader (engine/ray_pool.py). What a test asks of the engine happens inside the actor
(`tests.support.engines.Tunable`, set through `RayEngine.call`): the pause after each step (progress and a cancel see
the actor's own steps), refusing every job, and the fault seam of the reliability tests (`backend_faults`:
`EngineFaults` in the actor's DiT, driven by `RemoteFaults`, whose pause is seen and released through `FileFlag`s;
`backend_bot` is `make_rel_bot` on the backend). `backend.load(settings, where)` is the production load on the
backend (`Engine.load`, or a real engine actor), for a loader that waits first. Pytest groups a module's tests by the
module-scoped parameter, so the `ray` variants run one after the other on the one instance. `BACKENDS` are the two
names for a test whose bot runs in another process with its own config (tests/e2e/test_kill_restart.py). Their cost,
measured 2026-11-30 on the 2-core VM under load (average 3.6–5.9): the 21 `ray` variants of test_bot,
test_loras_images, test_faults and test_engine_status took 185 s of those modules' 505 s, 89 s of it starting each
module's Ray instance and actor; the later ones (one run each): test_fairness's backlog 31 s, test_recipe_show 34 s,
test_engine_devices 29 s (20-23 s of each: the module's instance and actor), test_engine_status's loading two 18 s,
test_kill_restart's mid-job kill 88-104 s (two bot processes, each starting its own instance and actor).
"""
from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.support.engines import FAULTS, TUNABLE_LOADER, TUNE, Failing, SlowSteps, pause_flags
from tests.support.file_flag import FileFlag

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
HAS_RAY = importlib.util.find_spec("ray") is not None
LOAD_WAIT_S = 60.0  # how long a gated loader waits for the test's gate (the `gate` fixture sets it at teardown)

BACKENDS = [  # the names, for a test that runs the bot in another process with its own config (test_kill_restart)
    "local",
    pytest.param("ray", marks=[pytest.mark.slow,
                               pytest.mark.skipif(not HAS_RAY, reason="Ray is not installed: pip install -e '.[ray]'")]),
]
on_both_backends = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


@dataclass
class LocalBackend:
    """Workers in the bot's process over the test's engine."""
    name: str = "local"

    def configure(self, config):
        return config

    def serves(self, bot) -> bool:
        """Whether `bot`'s workers are this backend's: in its own process."""
        return bool(bot.engines.workers) and not any(w.name.startswith("ray:") for w in bot.engines.workers)

    def load(self, settings, device: str):
        """The production load on this backend (`Engine.load`), for a loader that does something first."""
        from engine.pipeline import Engine

        return Engine.load(settings, device)

    async def loader(self, engine, *, gate: threading.Event | None = None, step_s: float = 0.0,
                     failing: bool = False) -> Callable[[Any, str], Any]:
        def load(_settings, _device):
            if gate is not None:
                gate.wait(LOAD_WAIT_S)
            if failing:
                return Failing(engine, 0.0)
            return SlowSteps(engine, step_s) if step_s else engine
        return load


@dataclass
class RayBackend:
    """Workers on a local Ray instance (started by the fixture), over one engine actor per engine settings."""
    name: str = "ray"
    _actor: tuple[Any, Any] | None = field(default=None, repr=False)  # (EngineSettings, RayEngine)

    def configure(self, config):
        from engine.ray_settings import RaySettings

        return replace(config, engine=replace(config.engine, backend="ray"), ray=RaySettings(local_gpus=1, poll_s=0.5))

    def serves(self, bot) -> bool:
        """Whether `bot`'s workers are this backend's: a Ray cluster's slots, over the module's actor."""
        from engine.ray_pool import RayWorkerPool

        actor = self._actor[1] if self._actor else None
        return isinstance(bot.engines._pool, RayWorkerPool) and bool(bot.engines.workers) and all(
            w.name.startswith("ray:") and w.engine is actor for w in bot.engines.workers)

    def load(self, settings, node_id: str):
        """The production load on this backend: an engine actor on `node_id` loading with `Engine.load` (the module's
        actor is closed first: the one logical GPU holds one actor at a time)."""
        from engine.ray_engine import RayEngine

        self.close()
        return RayEngine.start(settings, node_id, {"GPU": 1}, name="test-load")

    async def loader(self, engine, *, gate: threading.Event | None = None, step_s: float = 0.0,
                     failing: bool = False) -> Callable[[Any, str], Any]:
        remote = await asyncio.to_thread(self._actor_like, engine.settings)

        def load(_settings, _node_id):
            if gate is not None:
                gate.wait(LOAD_WAIT_S)
            remote.call(TUNE, step_s, failing)
            return remote
        return load

    def _actor_like(self, settings):
        """The module's engine actor with these engine settings (the one logical GPU holds one actor at a time)."""
        import ray

        from engine.ray_engine import RayEngine

        if self._actor is not None and self._actor[0] == settings:
            return self._actor[1]
        self.close()
        node_id = ray.get_runtime_context().get_node_id()
        remote = RayEngine.start(settings, node_id, {"GPU": 1}, name="test-actor", loader=TUNABLE_LOADER)
        self._actor = (settings, remote)
        return remote

    def faults(self, settings, folder: Path) -> "RemoteFaults":
        """An `EngineFaults` installed in the actor with these engine settings, its pause flags files in `folder`."""
        remote = self._actor_like(settings)
        remote.call(FAULTS, "install", "", str(folder))
        return RemoteFaults(remote, **pause_flags(folder))

    def close(self) -> None:
        if self._actor is not None:
            self._actor[1].close()
            self._actor = None


class RemoteFaults:
    """`EngineFaults` (tests/e2e/reliability_kit.py) inside an engine actor: a field set here is set there and read
    from there (`tests.support.engines.faults` through `RayEngine.call`), while the engine is idle. Its `paused` and
    `release` are `FileFlag`s (tests/support/file_flag.py) that the test and the actor share: a request to the actor
    would wait behind the job the pause holds on its one engine thread."""

    def __init__(self, remote, *, paused: FileFlag, release: FileFlag):
        object.__setattr__(self, "_remote", remote)
        object.__setattr__(self, "paused", paused)
        object.__setattr__(self, "release", release)

    def __setattr__(self, name: str, value) -> None:
        self._remote.call(FAULTS, "set", name, value)

    def __getattr__(self, name: str):
        return self._remote.call(FAULTS, "get", name)

    def remove(self) -> None:
        """Release a pause, take the seam out and put the engine's profile back (the OOM retry may have changed it)."""
        remote = object.__getattribute__(self, "_remote")
        object.__getattribute__(self, "release").set()
        remote.call(FAULTS, "remove")
        if remote.profile != "resident":
            remote.set_profile("resident")


@pytest.fixture
def backend_bot(backend, rel_config, rel_engine):
    """`await backend_bot(**rel_config changes)`: `make_rel_bot` (tests/e2e/reliability_kit.py) on the test's backend:
    a FluxBot over `rel_engine`, or over the module's actor with `rel_engine`'s settings."""
    async def _make(**changes):
        from bot.app import build_bot

        loader = await backend.loader(rel_engine)
        return await build_bot(backend.configure(rel_config(**changes)), engine_loader=loader, close_engines=False)
    return _make


@pytest.fixture
def backend_faults(backend, request):
    """`engine_faults` (tests/e2e/reliability_kit.py) on the test's backend: the seam on `rel_engine`'s DiT, or the
    same seam in the module's actor (`RemoteFaults`); removed after the test, the profile put back."""
    if backend.name == "local":
        yield request.getfixturevalue("engine_faults")
        return
    folder = request.getfixturevalue("tmp_path") / "engine-faults"
    folder.mkdir()
    remote = backend.faults(request.getfixturevalue("rel_engine").settings, folder)
    try:
        yield remote
    finally:
        remote.remove()


@pytest.fixture(scope="module")
def backend(request):
    """`local` unless the test is parametrized (`@on_both_backends`); `ray` starts the module's Ray instance."""
    name = getattr(request, "param", "local")
    if name == "local":
        yield LocalBackend()
        return
    import ray

    # The actors import tests/support from this checkout; the bots find Ray initialised and use it (and leave it).
    ray.init(address="local", num_gpus=1, include_dashboard=False, namespace="fluxbot-tests",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    ray_backend = RayBackend()
    try:
        yield ray_backend
    finally:
        ray_backend.close()
        ray.shutdown()
