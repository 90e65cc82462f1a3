"""The bot process is SIGKILLed in the middle of a job and started again: the job runs again from its row and
is delivered once; no second row, no second result. The process is the real `python -m bot run` (through
tests/e2e/bot_process.py) against the fake Discord in this process, with a token a test can recognise: it
must not appear in the log file or the process output.

The mid-job kill runs on both `[engine] backend`s: with `ray`, the bot process starts its own local Ray instance
(`[ray] address` empty, one logical GPU) whose engine actor holds the job; the instance's processes must end with
the killed bot, as a local engine process does, or a leaked actor would hold the GPU. Ray's kernel fate-sharing ends
its control service and raylet at once and the actor within seconds (measured: 1.4-3.0 s); its two per-node agents
(`ray::DashboardAgent`, `ray::RuntimeEnvAgent`, no GPU, no job) see the raylet gone at once too, but then wait
60 s trying to report it to the dead control service (`publish_error_to_driver`'s fixed timeout in Ray 2.60) before
they exit by themselves (measured: 61.8 s after the kill): the test does not wait for them (a minute of CI) and ends
them itself. (Not the module-scoped instance of tests/support/backends.py: the bot under test is
another process.) The kill after the image was saved stays local: the restart delivers the saved PNG, no engine is
asked.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.reliability_kit import has_result
from tests.support.backends import BACKENDS

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("bot_process.py")
# Shaped like a real bot token (so the pattern mask would catch it too) and unmistakable in a log.
TOKEN = "MTQ0NDQ0NDQ0NDQ0NDQ0NDQ0NA.GkIlLd.KILLRESTARTsecretTOKENvalue0123456"


RAY_SECTION = """
[ray]
local_gpus = 1
poll_s = 0.5
"""
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # they exit ~60 s after their raylet (see above)
ENGINE_CLOSED = {"local": re.compile(r"engine closed"), "ray": re.compile(r"engine actor \S+ closed")}


def write_config(tmp: Path, tiny_models_dir: Path, backend: str = "local") -> Path:
    cfg = tmp / "config.toml"
    cfg.write_text(f"""
[discord]
token = "{TOKEN}"
sizes = ["1:1 256x256"]
status_edit_interval_s = 0.5

[engine]
model = "tiny-random"
models_dir = "{tiny_models_dir}"
profile = "resident"
devices = ["cpu"]
images_dir = "{tmp / 'images'}"
default_steps = 2
max_sequence_length = 64
backend = "{backend}"
{RAY_SECTION if backend == "ray" else ""}
[database]
url = "sqlite+aiosqlite:///{tmp / 'fluxbot.db'}"

[logging]
file = "{tmp / 'fluxbot.log'}"
level = "DEBUG"
discord_level = "DEBUG"
""")
    return cfg


class BotProcess:
    """One `python -m bot run` process; its output goes to a file (a pipe could fill up and block it)."""

    def __init__(self, fake, config: Path, out: Path, pause_file: Path | None = None, *, ray: bool = False):
        cmd = [sys.executable, str(RUNNER), "--api", fake.api_base, "--gateway", fake.gateway_url]
        if pause_file is not None:
            cmd += ["--pause-file", str(pause_file)] + (["--ray"] if ray else [])
        cmd += ["--", "--config", str(config), "run"]
        # PYTHONPATH: an engine actor imports the pause seam from tests/ of this checkout.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
        for name in ("DISCORD_TOKEN", "RAY_ADDRESS"):  # the token from the config only; Ray: a local instance
            env.pop(name, None)
        self.out = out
        self._fh = open(out, "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._fh, stderr=subprocess.STDOUT, env=env)

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def descendants(self) -> list[psutil.Process]:
        """The processes this one started, and theirs (an engine process; a local Ray instance and its actors)."""
        return psutil.Process(self.proc.pid).children(recursive=True)

    async def stop(self, sig: int) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = await asyncio.to_thread(self.proc.wait, 30)
        self._fh.close()
        return rc


async def wait_for(fake, check, timeout: float, what: str, proc: BotProcess):
    """fake.wait_until, but fail at once (with the process output) if the bot process died."""
    def probe():
        if proc.proc.poll() is not None:
            raise AssertionError(f"the bot process exited ({proc.proc.returncode}) while waiting for {what}:\n"
                                 + proc.output()[-3000:])
        return check()
    return await fake.wait_until(probe, timeout, what)


async def left_running(processes: list[psutil.Process], timeout: float) -> list[str]:
    """Those of `processes` still running after `timeout` seconds (a process that ends is reaped by init)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in processes if _running(p)]
        if not alive:
            return []
        await asyncio.sleep(0.2)
    return [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in processes if _running(p)]


def end_processes(processes: list[psutil.Process]) -> None:
    """SIGKILL those still running (by their pids, which psutil checks are still theirs)."""
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def _ray_agent(process: psutil.Process) -> bool:
    """One of Ray's agents (by its title: the kernel keeps 15 characters of it, psutil reads the rest if it can)."""
    try:
        name = process.name()
    except psutil.NoSuchProcess:
        return False
    return any(agent[:15] == name[:15] for agent in RAY_AGENTS)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT id, status, delivered_at IS NOT NULL, result_message_id FROM jobs").fetchall()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_sigkill_mid_job_then_restart_reruns_and_delivers_once(fake_discord, tiny_model_dir, tmp_path,
                                                                     backend):
    fake = fake_discord
    fake.token = TOKEN
    config = write_config(tmp_path, tiny_model_dir.parent, backend)
    db, marker = tmp_path / "fluxbot.db", tmp_path / "paused"
    alice = fake.add_user("alice")
    # 1. The first process takes a job and is killed inside its first denoising step.
    t0 = time.monotonic()
    first = BotProcess(fake, config, tmp_path / "run1.out", pause_file=marker, ray=backend == "ray")
    try:
        await wait_for(fake, lambda: fake.command_syncs >= 1 and any(s.ready for s in fake.sessions), 60,
                       "the first bot process to connect", first)
        ix = await fake.slash(alice, "imagine", {"prompt": "a phoenix", "seed": 11, "steps": 2, "size": "256x256"})
        assert (await ix.wait_response(timeout=10)).deferred
        t_connected = time.monotonic()
        await wait_for(fake, marker.exists, 120, "the job to reach its first denoising step", first)
        assert rows(db) == [(1, "running", 0, None)]
        started_by_first = first.descendants()
    finally:
        rc_first = await first.stop(signal.SIGKILL)
    assert rc_first == -signal.SIGKILL
    t_killed = time.monotonic()
    # 2. What the killed process started ends with it (with Ray: the local instance and the actor holding the job;
    #    Ray's agents a minute later, by themselves: ended here, see above).
    agents = [p for p in started_by_first if _ray_agent(p)]
    assert await left_running([p for p in started_by_first if p not in agents], 30) == []
    end_processes(agents)
    t_cleaned = time.monotonic()
    # 3. A new process over the same files: the job goes back in the queue, runs again and is delivered.
    second = BotProcess(fake, config, tmp_path / "run2.out")
    try:
        result = await wait_for(fake, lambda: next((m for m in fake.messages if has_result(m)), None), 120,
                                "the result after the restart", second)
        await wait_for(fake, lambda: rows(db)[0][2] == 1, 10, "the delivery to be recorded", second)
        t_delivered = time.monotonic()
        started_by_second = second.descendants()
    finally:
        rc = await second.stop(signal.SIGTERM)
    t_stopped = time.monotonic()
    # 4. A stopped bot leaves nothing running either (with Ray: it shut its instance down, agents included).
    assert await left_running(started_by_second, 30) == []
    log.info("kill/restart (%s): first process connected after %.1f s; killed mid-job; its %d child process(es) but "
             "%d Ray agent(s) ended %.1f s after the kill; the restarted process delivered the job %.1f s after the "
             "kill; SIGTERM stop took %.1f s, its %d child process(es) ended %.1f s later", backend, t_connected - t0,
             len(started_by_first), len(agents), t_cleaned - t_killed,
             t_delivered - t_killed, t_stopped - t_delivered, len(started_by_second), time.monotonic() - t_stopped)
    # 5. One row, done, delivered once; the owner heard about the restart; the PNG is named by job id.
    identity = sqlite3.connect(db).execute("SELECT identity FROM instance").fetchone()[0]
    assert "a phoenix" in result.text() and result.custom_ids[0] == f"fluxbot:reroll:{identity}:1"
    assert [r[:3] for r in rows(db)] == [(1, "done", 1)] and rows(db)[0][3] == result.id
    assert len([m for m in fake.messages if has_result(m)]) == 1
    assert any("back in the queue" in m.content and f"<@{alice.id}>" in m.content for m in fake.messages)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [".fluxbot-job-ids.json", f"{identity}-1.png"]
    assert rc == 0, second.output()[-3000:]  # SIGTERM closes it like Ctrl+C
    # 6. The token was never written out, though discord.py logged at DEBUG through both runs.
    outputs = {"log file": (tmp_path / "fluxbot.log").read_text(), "run 1 output": first.output(),
               "run 2 output": second.output()}
    assert "job 1 delivered" in outputs["log file"]
    assert ENGINE_CLOSED[backend].search(outputs["log file"])  # the SIGTERM stop went through close()
    for name, text in outputs.items():
        assert TOKEN not in text, f"the bot token appears in the {name}"
        assert TOKEN.split(".")[2] not in text, f"part of the bot token appears in the {name}"


async def test_sigkill_after_the_image_was_saved_before_delivery_delivers_once_on_restart(fake_discord,
                                                                                          tiny_model_dir, tmp_path):
    fake = fake_discord
    fake.token = TOKEN
    config = write_config(tmp_path, tiny_model_dir.parent)
    db = tmp_path / "fluxbot.db"
    alice = fake.add_user("alice")
    # 1. Discord refuses every delivery (followup 404, channel 503): the job is done, its result not sent.
    followup = fake.fail(r"^/webhooks/\d+/[^/]+$", 404, times=1000, method="POST")
    channel = fake.fail(r"^/channels/\d+/messages$", 503, times=1000, method="POST")
    first = BotProcess(fake, config, tmp_path / "run1.out")
    try:
        await wait_for(fake, lambda: fake.command_syncs >= 1 and any(s.ready for s in fake.sessions), 60,
                       "the first bot process to connect", first)
        ix = await fake.slash(alice, "imagine", {"prompt": "a comet", "seed": 12, "steps": 1, "size": "256x256"})
        assert (await ix.wait_response(timeout=10)).deferred
        await wait_for(fake, lambda: followup.hits >= 1 and channel.hits >= 1, 60, "a failed delivery", first)
        assert rows(db) == [(1, "done", 0, None)]
    finally:
        rc_first = await first.stop(signal.SIGKILL)
    assert rc_first == -signal.SIGKILL  # killed while retrying the delivery
    # 2. Discord is back; the restarted bot sends what was made but never delivered, once, and makes nothing.
    fake.faults = type(fake.faults)()
    second = BotProcess(fake, config, tmp_path / "run2.out")
    try:
        result = await wait_for(fake, lambda: next((m for m in fake.messages if has_result(m)), None), 60,
                                "the result after the restart", second)
        await wait_for(fake, lambda: rows(db)[0][2] == 1, 10, "the delivery to be recorded", second)
        await asyncio.sleep(0.5)
    finally:
        await second.stop(signal.SIGTERM)
    assert "a comet" in result.text() and f"<@{alice.id}>" in result.content
    assert rows(db) == [(1, "done", 1, result.id)]
    assert len([m for m in fake.messages if has_result(m)]) == 1
    # delivered from the saved PNG, not made again: one generation in the log of both runs
    assert (tmp_path / "fluxbot.log").read_text().count("generated 1 image") == 1
