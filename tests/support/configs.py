"""The settings tests run with: `tiny_engine_settings`, the tiny model on the CPU (resident, 2 steps, 64 T5 tokens), and
`bot_config`, the Config the end-to-end tests run a bot with (that engine, 256² sizes, SQLite and images under the
test's folder), each with some fields changed. The `rel_config` fixture (tests/e2e/reliability_kit.py) binds
`bot_config` to a test's tmp_path and the tiny model; `tiny_settings` and the shared engines (tests/conftest.py,
`rel_engine`) start from `tiny_engine_settings`."""
from __future__ import annotations

from pathlib import Path

from bot.config import Config, DatabaseSettings, DiscordSettings, LimitsSettings, LoggingSettings, Secret
from engine.settings import TINY, EngineSettings

SIZES = ["1:1 256x256", "2:1 512x256"]


def tiny_engine_settings(models_dir: Path, **changes) -> EngineSettings:
    """EngineSettings of `models_dir`/tiny-random on the CPU, resident, 2 steps and 64 T5 tokens; `changes`: other
    fields (images_dir, loras_dir, ...)."""
    fields = dict(model=TINY, models_dir=str(models_dir), profile="resident", devices=["cpu"], default_steps=2,
                  max_sequence_length=64)
    return EngineSettings(**{**fields, **changes})


def bot_config(tmp_path: Path, models_dir: Path, *, discord: dict | None = None, limits: dict | None = None,
               engine: dict | None = None, logging_: dict | None = None, db_url: str | None = None) -> Config:
    """A test Config; `discord`, `limits`, `engine`, `logging_`: fields of those sections to change; `db_url`: another
    database than `tmp_path/fluxbot.db`."""
    d = dict(token=Secret("unused-in-tests"), sizes=SIZES, status_edit_interval_s=0.5)
    d.update(discord or {})
    e = tiny_engine_settings(models_dir, **{"images_dir": str(tmp_path / "images"), **(engine or {})})
    lim = dict(max_unfinished_per_user=5)
    lim.update(limits or {})
    return Config(discord=DiscordSettings(**d), engine=e, limits=LimitsSettings(**lim),
                  database=DatabaseSettings(url=db_url or f"sqlite+aiosqlite:///{tmp_path / 'fluxbot.db'}"),
                  logging=LoggingSettings(**{"file": "", **(logging_ or {})}))
