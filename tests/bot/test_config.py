"""The config file: what an owner writes, what they get back when it is wrong."""
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bot.config import ConfigError, Secret, load_config, parse_config, render_example

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, text):
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_example_file_is_complete_and_current():
    # Every key is documented in config.example.toml, and the file is what the code renders.
    assert (ROOT / "config.example.toml").read_text() == render_example(), \
        "run: python -m bot.config > config.example.toml"
    cfg = parse_config(tomllib.loads(render_example()))
    assert cfg.engine.model == "tiny-random"


def test_minimal_file_runs_with_defaults(tmp_path):
    p = write(tmp_path, '[discord]\ntoken = "abc"\n[engine]\nmodel = "tiny-random"\n'
                        '[database]\nurl = "sqlite+aiosqlite:///x.db"\n')
    cfg = load_config(p, env={})
    assert cfg.discord.token.reveal() == "abc"
    assert cfg.limits.max_unfinished_per_user == 3
    assert cfg.engine.default_steps == 20
    assert cfg.database.url == f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"  # beside the config file


@pytest.mark.parametrize("text, message", [
    ('[engine]\nprofile = "fast"\n', "[engine] profile = 'fast': must be one of auto, resident"),
    ('[engine]\nprompt_cache_size = "big"\n', "[engine] prompt_cache_size = 'big': must be a whole number"),
    ('[engine]\nmax_batch = 0\n', "[engine] max_batch = 0: must be at least 1"),
    ('[limits]\nmax_unfinished_per_user = 1.5\n', "[limits] max_unfinished_per_user = 1.5: must be a whole number"),
    ('[discord]\nallow_dms = "yes"\n', "[discord] allow_dms = 'yes': must be true or false"),
    ('[discord]\nowner_ids = ["bob"]\n', "[discord] owner_ids = ['bob']: every item must be a Discord id"),
    ('[discord]\ntokn = "x"\n', "[discord] tokn: unknown key"),
    ('[engin]\nmodel = "x"\n', "unknown section [engin]"),
    ('engine = 3\n', "[engine] must be a table"),
    ('[database]\nurl = 5\n', "[database] url = 5: must be a string"),
    ('[engine]\nbackend = "slurm"\n', "[engine] backend = 'slurm': must be one of local, ray"),
    ('[ray]\nresources = 1\n', "[ray] resources = 1: must be a table, e.g. { GPU = 1 }"),
    ('[ray]\nresources = { GPU = "one" }\n', "GPU must be a number of 0 or more, not 'one'"),
    ('[ray]\npoll_s = 0\n', "[ray] poll_s = 0: must be at least 0.1"),
])
def test_bad_values_name_the_key_and_value(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), env={})
    assert message in str(e.value)
    assert str(tmp_path / "config.toml") in str(e.value)


def test_env_token_overrides_and_is_never_shown(tmp_path):
    p = write(tmp_path, '[discord]\ntoken = "file-token"\n')
    cfg = load_config(p, env={"DISCORD_TOKEN": "env-token-SECRET"})
    assert cfg.discord.token.reveal() == "env-token-SECRET"
    for text in (repr(cfg), str(cfg), f"{cfg.discord.token}", str(cfg.discord.token), repr(cfg.discord)):
        assert "SECRET" not in text and "file-token" not in text


def test_token_type_error_does_not_echo_it(tmp_path):
    p = write(tmp_path, '[discord]\ntoken = 12345678\n')
    with pytest.raises(ConfigError) as e:
        load_config(p, env={})
    assert "12345678" not in str(e.value) and "[discord] token" in str(e.value)


def test_missing_token_when_required(tmp_path):
    with pytest.raises(ConfigError, match="token is empty"):
        load_config(write(tmp_path, ""), env={}, require_token=True)


def test_lookup_order(tmp_path, monkeypatch):
    a = write(tmp_path, '[engine]\ndefault_steps = 7\n')
    monkeypatch.setenv("FLUXBOT_CONFIG", str(a))
    assert load_config().engine.default_steps == 7
    b = tmp_path / "other.toml"
    b.write_text('[engine]\ndefault_steps = 9\n')
    assert load_config(b).engine.default_steps == 9


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist: copy config.example.toml"):
        load_config(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[engine\n"), env={})


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "bot", "--help"], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    for cmd in ("run", "generate", "migrate", "download", "doctor"):
        assert cmd in out


def test_cli_reports_config_errors_with_exit_2(tmp_path):
    p = write(tmp_path, '[engine]\nprofile = "fast"\n')
    r = subprocess.run([sys.executable, "-m", "bot", "--config", str(p), "doctor"], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, "DISCORD_TOKEN": ""})
    assert r.returncode != 0
    assert "[engine] profile = 'fast'" in r.stderr + r.stdout


def test_relative_paths_mean_beside_the_config_file_whatever_the_working_directory(tmp_path, monkeypatch):
    home, elsewhere = tmp_path / "bot-home", tmp_path / "elsewhere"
    (home / "models" / "FLUX.1-dev").mkdir(parents=True)
    elsewhere.mkdir()
    p = write(home, '[engine]\nmodel = "tiny-random"\n[logging]\nfile = "logs/bot.log"\n')
    monkeypatch.chdir(elsewhere)  # e.g. a service started from /
    cfg = load_config(p, env={})
    assert cfg.database.url == f"sqlite+aiosqlite:///{home / 'data' / 'fluxbot.db'}"
    assert (cfg.engine.models_dir, cfg.engine.images_dir) == (str(home / "models"), str(home / "data" / "images"))
    assert cfg.engine.base_model == str(home / "models" / "FLUX.1-dev")
    assert cfg.logging.file == str(home / "logs" / "bot.log")
    absolute = write(home, f'[engine]\nimages_dir = "{tmp_path / "pngs"}"\n[database]\nurl = "sqlite+aiosqlite://"\n')
    cfg = load_config(absolute, env={})
    assert cfg.engine.images_dir == str(tmp_path / "pngs") and cfg.database.url == "sqlite+aiosqlite://"


@pytest.mark.parametrize("where", ["file", "env"])
def test_a_bot_prefix_in_the_token_is_refused_with_what_to_do(tmp_path, where):
    token = "MTA5ODc2NTQzMjEwOTg3NjU0.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456789AB"
    text = f'[discord]\ntoken = "Bot {token}"\n' if where == "file" else ""
    env = {"DISCORD_TOKEN": f"Bot {token}"} if where == "env" else {}
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), env=env)
    assert "starts with 'Bot': give the token alone" in str(err.value) and token not in str(err.value)


def test_a_top_level_token_says_to_put_it_under_discord(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, 'token = "secret-token-value"\n[engine]\nmodel = "tiny-random"\n'), env={})
    assert "put it under [discord]" in str(err.value) and "secret-token-value" not in str(err.value)
    with pytest.raises(ConfigError, match=r"\[engine\] token: unknown key .*token belongs under \[discord\]"):
        load_config(write(tmp_path, '[engine]\ntoken = "x"\n'), env={})


def test_the_ray_section_reads_the_cluster_and_the_resources_of_one_worker(tmp_path):
    cfg = load_config(write(tmp_path, '[engine]\nbackend = "ray"\n[ray]\naddress = "10.0.0.1:6379"\n'
                                      'resources = { GPU = 1, flux = 1 }\n'), env={})
    assert cfg.engine.backend == "ray" and cfg.ray.address == "10.0.0.1:6379"
    assert cfg.ray.resources == {"GPU": 1.0, "flux": 1.0}
    # A node holds as many workers as its resources allow; one without GPUs (the head) none.
    assert cfg.ray.worker_count({"GPU": 8.0, "flux": 4.0, "CPU": 64.0}) == 4
    assert cfg.ray.worker_count({"CPU": 16.0}) == 0
    assert load_config(write(tmp_path, ""), env={}).engine.backend == "local"


def test_a_ray_client_address_is_refused_at_start_saying_what_to_use_instead(tmp_path, capsys):
    # Ray Client refuses the streaming actor calls that bring a job's progress and images back (engine/ray_settings.py
    # address_problem): `python -m bot run` stops before connecting to anything and names what works.
    from bot.cli import main

    path = write(tmp_path, '[discord]\ntoken = "abc"\n[engine]\nbackend = "ray"\n'
                           '[ray]\naddress = "ray://127.0.0.1:10001"\n')
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: [ray] address = 'ray://127.0.0.1:10001' is a Ray Client address")
    assert "cluster address instead" in err and "'10.0.0.1:6379'" in err and "VPN" in err and str(path) in err
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
