"""`bot_config`: the Config the end-to-end tests run a bot with (the tiny model on the CPU, 256² sizes, SQLite and
images under the test's folder), with some fields of its sections changed. The `rel_config` fixture
(tests/e2e/reliability_kit.py) binds it to a test's tmp_path and the tiny model."""
from __future__ import annotations

from pathlib import Path

from bot.config import Config, DatabaseSettings, DiscordSettings, LimitsSettings, LoggingSettings, Secret
from engine.settings import TINY, EngineSettings

SIZES = ["1:1 256x256", "2:1 512x256"]


def bot_config(tmp_path: Path, models_dir: Path, *, discord: dict | None = None, limits: dict | None = None,
               engine: dict | None = None, logging_: dict | None = None, db_url: str | None = None) -> Config:
    """A test Config; `discord`, `limits`, `engine`, `logging_`: fields of those sections to change; `db_url`: another
    database than `tmp_path/fluxbot.db`."""
    d = dict(token=Secret("unused-in-tests"), sizes=SIZES, status_edit_interval_s=0.5)
    d.update(discord or {})
    e = dict(model=TINY, models_dir=str(models_dir), profile="resident", devices=["cpu"],
             images_dir=str(tmp_path / "images"), default_steps=2, max_sequence_length=64)
    e.update(engine or {})
    lim = dict(max_unfinished_per_user=5)
    lim.update(limits or {})
    return Config(discord=DiscordSettings(**d), engine=EngineSettings(**e), limits=LimitsSettings(**lim),
                  database=DatabaseSettings(url=db_url or f"sqlite+aiosqlite:///{tmp_path / 'fluxbot.db'}"),
                  logging=LoggingSettings(**{"file": "", **(logging_ or {})}))
