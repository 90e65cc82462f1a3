"""`python -m bot web`, as the README starts it: a config with no Discord token, tiny-random, the console on a free
port. It serves a request, picks up the job an earlier run left unfinished (a Discord user's, delivered by the bot
when it next starts), and SIGTERM stops it cleanly."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from db import jobs as store_jobs
from db.records import NewJob
from db.session import open_store
from tests.support.web_console import form

gradio_client = pytest.importorskip("gradio_client")

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def write_config(tmp_path: Path, models_dir: Path, port: int, extra: str = "") -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f"""
[engine]
model = "tiny-random"
models_dir = "{models_dir}"
devices = ["cpu"]
default_steps = 2

[discord]
sizes = ["1:1 256x256"]

[logging]
file = ""

[web]
port = {port}
{extra}
""")
    return config


async def leave_a_discord_job(db_url: str) -> int:
    async with await open_store(db_url) as store:
        job = await store_jobs.create_job(store, NewJob(user_id=77, prompt="left by the bot", seed=9, steps=1,
                                                        width=256, height=256, guidance=3.5, guild_id=1,
                                                        channel_id=2))
        return job.id


async def read_job(db_url: str, job_id: int):
    async with await open_store(db_url) as store:
        return await store_jobs.get_job(store, job_id), [j.id for j in await store_jobs.undelivered_jobs(store)]


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            assert proc.poll() is None, f"python -m bot web exited {proc.returncode}:\n{''.join(seen)}"
            continue
        seen.append(line)
        if needle in line:
            # Keep reading in the background: a child whose stderr pipe fills up blocks on its next log line and
            # would never get to its clean stop.
            threading.Thread(target=lambda: seen.extend(proc.stderr), daemon=True).start()
            return line
    raise AssertionError(f"no {needle!r} within {timeout} s:\n{''.join(seen)}")


def test_python_m_bot_web_serves_alone_and_stops_on_sigterm(tmp_path, tiny_model_dir):
    # 1. a database an earlier run left with a queued Discord job
    port = free_port()
    config = write_config(tmp_path, tiny_model_dir.parent, port)
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'fluxbot.db'}"
    (tmp_path / "data").mkdir()
    left = asyncio.run(leave_a_discord_job(db_url))
    # 2. the command, without DISCORD_TOKEN
    env = {k: v for k, v in os.environ.items() if k not in ("DISCORD_TOKEN", "FLUXBOT_WEB_AUTH")}
    proc = subprocess.Popen([sys.executable, "-m", "bot", "web", "--config", str(config)], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        assert wait_for_line(proc, "(Ctrl+C stops it)").strip() == \
            f"web console at http://127.0.0.1:{port}/ (Ctrl+C stops it)"
        # 3. a request through the page's API
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path))
        status, *_ = client.predict(*form("a cat", 5), api_name="/generate")
        assert status.startswith("Job #") and "done" in status
        # 4. SIGTERM: a clean stop
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    # 5. the Discord job ran here and waits for the bot to deliver it
    job, undelivered = asyncio.run(read_job(db_url, left))
    assert job.status == "done" and undelivered == [left]


def test_an_exposed_address_without_a_login_is_a_config_error(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir.parent, free_port(), 'host = "0.0.0.0"')
    env = {k: v for k, v in os.environ.items() if k != "FLUXBOT_WEB_AUTH"}
    done = subprocess.run([sys.executable, "-m", "bot", "web", "--config", str(config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().endswith("config error: [web] host = '0.0.0.0' lets other machines reach the console: "
                                        "set [web] auth ('user:password', or the environment variable "
                                        "FLUXBOT_WEB_AUTH), or keep host = '127.0.0.1' and use an SSH tunnel "
                                        "(docs/web.md)")
