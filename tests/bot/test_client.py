"""Building the bot (bot/app.py: services first, then the client) and `python -m bot run` start-up errors (no
network: nothing here connects)."""
import pytest

from bot.app import build_bot, open_services
from bot.cli import main
from bot.client import FluxBot, intents
from bot.config import Config, ConfigError, DatabaseSettings, DiscordSettings
from engine.settings import EngineSettings


def test_intents_are_minimal():
    wanted = intents()
    assert wanted.guilds
    assert not wanted.message_content and not wanted.members and not wanted.presences


def small_config(tmp_path, sizes: list[str]) -> Config:
    return Config(discord=DiscordSettings(sizes=sizes),
                  engine=EngineSettings(devices=["cpu"], images_dir=str(tmp_path / "images")),
                  database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'fluxbot.db'}"))


async def test_the_bot_is_built_on_services_made_before_it_connects(tmp_path):
    """Every service exists once the bot is built (nothing waits for setup_hook), /imagine offers the config's
    sizes, and a job button's action leads straight to the imagine feature's handler."""
    bot = await build_bot(small_config(tmp_path, ["square 512x512", "768x512"]))
    try:
        assert isinstance(bot, FluxBot)
        assert bot.store is bot.services.store and bot.jobs.store is bot.store and bot.jobs.queue is bot.queue
        assert bot.identity and bot.tracker is not None and bot.engines.state.loading
        assert [(s.label, s.value) for s in bot.imagine.sizes] == [("square", "512x512"), ("3:2", "768x512")]
        assert bot.job_buttons["reroll"] == bot.imagine.reroll and set(bot.job_buttons) == {
            "reroll", "vary", "varystrong", "upscale", "edit", "delete", "cancel"}
    finally:
        await bot.close()


async def test_a_bad_size_in_the_config_stops_the_bot_with_the_key_named_before_anything_opens(tmp_path):
    with pytest.raises(ConfigError, match=r"\[discord\] sizes: '1:1 1000x1000'"):
        await open_services(small_config(tmp_path, ["1:1 1000x1000"]))
    assert not (tmp_path / "fluxbot.db").exists()


def test_run_without_a_token_says_where_to_put_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    cfg = tmp_path / "config.toml"
    cfg.write_text('[engine]\nmodel = "tiny-random"\n')
    assert main(["--config", str(cfg), "run"]) == 2
    err = capsys.readouterr().err
    assert "[discord] token is empty" in err and "DISCORD_TOKEN" in err
