"""FluxBot construction and `python -m bot run` start-up errors (no network: nothing here connects)."""
import pytest

from bot.cli import main
from bot.client import FluxBot, intents
from bot.config import Config, ConfigError, DiscordSettings


def test_intents_are_minimal():
    wanted = intents()
    assert wanted.guilds
    assert not wanted.message_content and not wanted.members and not wanted.presences


def test_bot_takes_its_size_choices_from_the_config():
    bot = FluxBot(Config(discord=DiscordSettings(sizes=["square 512x512", "768x512"])))
    assert [(s.label, s.value) for s in bot.sizes] == [("square", "512x512"), ("3:2", "768x512")]


def test_a_bad_size_in_the_config_stops_the_bot_with_the_key_named():
    with pytest.raises(ConfigError, match=r"\[discord\] sizes: '1:1 1000x1000'"):
        FluxBot(Config(discord=DiscordSettings(sizes=["1:1 1000x1000"])))


def test_run_without_a_token_says_where_to_put_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    cfg = tmp_path / "config.toml"
    cfg.write_text('[engine]\nmodel = "tiny-random"\n')
    assert main(["--config", str(cfg), "run"]) == 2
    err = capsys.readouterr().err
    assert "[discord] token is empty" in err and "DISCORD_TOKEN" in err
