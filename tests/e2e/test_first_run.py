"""A new owner's first `python -m bot run`, in its own process: Discord out of reach is one line and exit
status 1 (no traceback), with the reason in the log file; `--config` works after the subcommand too; relative
paths in the config file mean beside it, wherever the bot is started from."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import main

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "tests" / "e2e" / "bot_process.py"
# Shaped like a bot token (user id . timestamp . HMAC), not a real one.
TOKEN = "MTA5ODc2NTQzMjEwOTg3NjU0.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456789AB"


def _home(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A bot folder with a config that uses relative paths for the database, the images and the log."""
    home = tmp_path / "bot-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[discord]\ntoken = "{TOKEN}"\n[engine]\nmodel = "tiny-random"\nmodels_dir = "{tiny_model_dir.parent}"\n'
        f'devices = ["cpu"]\nimages_dir = "pngs"\n[database]\nurl = "sqlite+aiosqlite:///state/fluxbot.db"\n'
        f'[logging]\nfile = "logs/fluxbot.log"\n')
    return home


@pytest.mark.parametrize("api, reason", [("http://127.0.0.1:1/api/v10", "127.0.0.1:1: Connect call failed"),
                                         ("http://discord.invalid/api/v10", "discord.invalid:80: ")],
                         ids=["refused", "dns"])
def test_run_without_discord_prints_one_line_and_exits_1(tmp_path, tiny_model_dir, api, reason):
    home = _home(tmp_path, tiny_model_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # 1. Started from another folder, --config after the subcommand.
    proc = subprocess.run([sys.executable, str(RUNNER), "--api", api, "--gateway", "ws://127.0.0.1:1/gateway",
                           "--", "run", "--config", str(home / "config.toml")],
                          cwd=elsewhere, capture_output=True, text=True, timeout=240)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    # 2. "connecting…", then the one line; no traceback, no voice warnings (the bot has no voice).
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "PyNaCl" not in proc.stderr and "davey" not in proc.stderr
    assert lines[0] == "connecting to Discord…", lines
    assert lines[-1].startswith(f"cannot reach Discord ({reason}") and \
        lines[-1].endswith("): check network, firewall or proxy"), lines
    assert len(lines) <= 3, lines
    # 3. The reason is in the log file, which is beside the config (not in the working directory).
    log_text = (home / "logs" / "fluxbot.log").read_text()
    assert "CRITICAL" in log_text and "cannot reach Discord" in log_text and TOKEN not in log_text
    assert not list(elsewhere.iterdir())


def test_config_after_the_subcommand_and_paths_beside_the_config(tmp_path, tiny_model_dir, monkeypatch, capsys):
    home = _home(tmp_path, tiny_model_dir)
    monkeypatch.chdir(tmp_path)
    assert main(["migrate", "--config", str(home / "config.toml")]) == 0, capsys.readouterr().err
    assert (home / "state" / "fluxbot.db").exists() and not (tmp_path / "state").exists()
