"""`python -m bot doctor` on the CPU: a working tiny-random set-up, and each thing that stops the bot."""
from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bot.doctor import doctor_command, estimate_weight_bytes
from engine import download as dl
from engine.settings import EngineSettings

TOKEN = "MTA5ODc2NTQzMjEwOTg3NjU0.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456789AB"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    monkeypatch.delenv("FLUXBOT_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)


def _config(tmp_path: Path, *, token: str = TOKEN, model: str = "tiny-random", db: str | None = None,
            extra: str = "") -> str:
    db = db or f"sqlite+aiosqlite:///{tmp_path / 'data' / 'fluxbot.db'}"
    text = (f'[discord]\ntoken = "{token}"\n[engine]\nmodel = "{model}"\nmodels_dir = "{tmp_path / "models"}"\n'
            f'base_model = "{tmp_path / "models" / "FLUX.1-dev"}"\n[database]\nurl = "{db}"\n{extra}')
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def _run(config: str, capsys, quick: bool = False) -> tuple[int, str]:
    rc = doctor_command(argparse.Namespace(config=config, quick=quick))
    out = capsys.readouterr()
    return rc, out.out + out.err


def _single_file_setup(tmp_path: Path) -> Path:
    """A majicflus-like single-file DiT with a FLUX.1-dev-like base folder, both with manifests."""
    base = tmp_path / "models" / "FLUX.1-dev"
    for sub in ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae", "transformer"):
        (base / sub).mkdir(parents=True)
    (base / "model_index.json").write_text("{}")
    (base / "transformer/config.json").write_text("{}")
    save_file({"encoder.weight": torch.zeros(64, 64)}, str(base / "text_encoder_2/model.safetensors"))
    dl.write_manifest(base, ["model_index.json", "transformer/config.json", "text_encoder_2/model.safetensors"])
    dit = tmp_path / "models" / "majicflus_v1" / "majicflus_v134.safetensors"
    dit.parent.mkdir(parents=True)
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.ones(128, 32),
               "double_blocks.0.img_attn.norm.query_norm.scale": torch.ones(32)}, str(dit))
    dl.write_manifest(dit.parent, [dit.name])
    return dit


def test_tiny_random_setup_passes_and_never_prints_the_token(tmp_path, capsys):
    rc, out = _run(_config(tmp_path), capsys)
    assert rc == 0, out
    assert TOKEN not in out and TOKEN[:20] not in out
    assert "token" in out and "value hidden" in out
    assert "tiny-random" in out and "host RAM" in out and "free for models" in out
    assert "cpu: resident" in out  # the profile auto picks on this machine, with its reason
    assert "not created yet" in out  # the SQLite file the first start will create


def test_missing_model_fails_and_says_how_to_get_it(tmp_path, capsys):
    rc, out = _run(_config(tmp_path, model=str(tmp_path / "models" / "nothing.safetensors")), capsys)
    assert rc == 1
    assert "FAIL" in out and "python -m bot download" in out


def test_a_bot_prefix_in_the_token_fails_with_what_to_do_and_stays_hidden(tmp_path, capsys):
    rc, out = _run(_config(tmp_path, token=f"Bot {TOKEN}"), capsys)
    assert rc == 1 and "starts with 'Bot': give the token alone" in out  # was "ok": Discord would answer 401
    assert TOKEN not in out and TOKEN[:20] not in out


def test_missing_token_fails(tmp_path, capsys):
    rc, out = _run(_config(tmp_path, token=""), capsys)
    assert rc == 1 and "no Discord bot token" in out


def test_bad_config_fails_but_still_reports_the_machine(tmp_path, capsys):
    rc, out = _run(_config(tmp_path, extra='[limits]\nmax_count = "four"\n'), capsys)
    assert rc == 1
    assert "max_count" in out and "host RAM" in out


def test_single_file_model_verified_then_a_corrupted_byte_fails(tmp_path, capsys):
    dit = _single_file_setup(tmp_path)
    config = _config(tmp_path, model=str(dit))
    rc, out = _run(config, capsys)
    assert rc == 0, out
    assert "SHA-256 verified" in out and "single-file" in out
    data = bytearray(dit.read_bytes())
    data[-1] ^= 0x01  # same size, different content
    dit.write_bytes(bytes(data))
    rc, out = _run(config, capsys, quick=True)
    assert rc == 0  # sizes alone cannot tell
    rc, out = _run(config, capsys)
    assert rc == 1 and "majicflus_v134.safetensors" in out and "corrupt" in out


def test_a_file_deleted_from_the_base_folder_fails(tmp_path, capsys):
    dit = _single_file_setup(tmp_path)
    (tmp_path / "models/FLUX.1-dev/text_encoder_2/model.safetensors").unlink()
    rc, out = _run(_config(tmp_path, model=str(dit)), capsys, quick=True)
    assert rc == 1 and "missing: text_encoder_2/model.safetensors" in out


def test_existing_sqlite_database_reports_its_schema(tmp_path, capsys):
    db = tmp_path / "data" / "fluxbot.db"
    db.parent.mkdir()
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32))")
        conn.execute("INSERT INTO alembic_version VALUES ('0001_jobs')")
    rc, out = _run(_config(tmp_path), capsys)
    assert rc == 0 and "reachable; schema revision 0001_jobs" in out


def test_unreachable_database_fails_without_showing_its_password(tmp_path, capsys):
    url = "postgresql+asyncpg://fluxbot:s3cret-pw@127.0.0.1:1/fluxbot"
    rc, out = _run(_config(tmp_path, db=url), capsys)
    assert rc == 1 and "database" in out
    assert "s3cret-pw" not in out and "fluxbot:***@127.0.0.1" in out


@pytest.mark.slow
def test_weight_estimate_matches_the_real_flux_dit_in_fp8(tmp_path):
    """The header-only estimate for the real FLUX.1-dev DiT shape (12B params): fp8 all-linear is about
    11.1 GiB (DESIGN.md §2), bf16 about 22.2 GiB."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(guidance_embeds=True)
    header = {name: {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [0, 0]}
              for name, t in model.state_dict().items()}
    folder = tmp_path / "FLUX.1-dev" / "transformer"
    folder.mkdir(parents=True)
    import json
    import struct
    raw = json.dumps(header).encode()
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    gib = 1024 ** 3
    fp8, _ = estimate_weight_bytes(EngineSettings(model=str(tmp_path / "FLUX.1-dev"), fp8="all-linear"))
    bf16, _ = estimate_weight_bytes(EngineSettings(model=str(tmp_path / "FLUX.1-dev"), fp8="off"))
    assert 10.8 * gib < fp8 < 11.4 * gib
    assert 21.9 * gib < bf16 < 22.5 * gib


def test_a_check_that_crashes_is_reported_and_the_others_still_run(tmp_path, capsys, monkeypatch):
    import bot.doctor

    def broken(url, checks):
        raise ModuleNotFoundError("No module named 'sqlalchemy'")

    monkeypatch.setattr(bot.doctor, "_check_database", broken)
    rc, out = _run(_config(tmp_path), capsys)
    assert rc == 1
    assert "the check itself failed: ModuleNotFoundError" in out and "tiny-random" in out



def test_doctor_prints_the_placement_plan_and_refuses_an_impossible_ram_budget(tmp_path, capsys):
    rc, out = _run(_config(tmp_path), capsys)
    assert rc == 0 and "cpu: resident: every weight in host RAM" in out
    assert "plan      budgets:" in out and "no speed prediction on the CPU" in out
    config = Path(_config(tmp_path))
    config.write_text(config.read_text().replace("[engine]\n", "[engine]\nram_budget_gib = 100000\n"))
    rc, out = _run(str(config), capsys)
    assert rc == 1 and "[engine] ram_budget_gib = 100000 is larger than this machine" in out
