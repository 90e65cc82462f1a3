"""The config file: parsed with tomllib, validated at start-up, with errors that name the key and the value.

Look-up order for the file: `--config PATH`, then env `FLUXBOT_CONFIG`, then `./config.toml`.
Env `DISCORD_TOKEN` overrides `[discord] token`. Every key but the token has a default.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import textwrap
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import limits
from engine.ray_settings import RaySettings, address_problem
from engine.settings import TINY, EngineSettings, setting

log = logging.getLogger(__name__)

DEFAULT_PATH = "config.toml"


class ConfigError(Exception):
    """The config file is missing, unreadable or holds a bad value. The message names the key."""


class Secret(str):
    """A string that never shows itself in repr, logs or error messages."""

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __str__(self) -> str:  # f"{token}" and str(token) stay masked; use .reveal() to send it
        return repr(self)

    def reveal(self) -> str:
        return str.__str__(self)


@dataclass(frozen=True)
class DiscordSettings:
    token: Secret = setting(Secret(""), "The bot token from the Developer Portal (Bot → Reset Token). Never commit it.",
                            env="DISCORD_TOKEN")
    guild_ids: list = setting([], "Guild ids to sync slash commands to at once (development); empty = global "
                              "sync, which Discord may take up to an hour to show.")
    owner_ids: list = setting([], "User ids with admin rights everywhere (cancel/delete any job, /history of others).")
    admin_role_ids: list = setting([], "Role ids whose members have admin rights in their guild, over the jobs made "
                                   "in that guild only (never other guilds' or DM jobs).")
    allowed_channel_ids: list = setting([], "If not empty, /imagine works only in these channels.")
    allowed_role_ids: list = setting([], "If not empty, only members with one of these roles may generate.")
    allow_dms: bool = setting(True, "Whether /imagine works in direct messages with the bot.")
    allow_dms_when_restricted: bool = setting(False, "While allowed_channel_ids or allowed_role_ids is set, DMs are "
                                              "refused too (a DM has no channel or role to check) unless this is "
                                              "true (and allow_dms).")
    banned_words: list = setting([], "Prompts containing any of these words (any case, look-alike letters "
                                 "folded) are refused with a message; nothing is queued.")
    status_edit_interval_s: float = setting(2.0, "Least seconds between two edits of one status message.",
                                            min=0.5, max=60)
    sizes: list = setting(["1:1 1024x1024", "3:4 896x1152", "4:3 1152x896", "9:16 768x1344", "16:9 1344x768"],
                          "The /imagine size choices, 'LABEL WIDTHxHEIGHT' (multiples of 16, at most 25); the "
                          "first is the default.")


@dataclass(frozen=True)
class LimitsSettings:
    max_unfinished_per_user: int = setting(3, "Queued or running jobs one user may have at once.", min=1, max=100)
    cooldown_s: float = setting(0.0, "Seconds a user waits between two requests; 0 = none.", min=0, max=86400)
    queue_cap: int = setting(100, "Most jobs waiting in the queue for everyone together.", min=1, max=100000)
    max_unfinished_per_guild: int = setting(0, "Queued or running jobs one server may have at once (DMs count as "
                                            "one server); 0 = no cap.", min=0, max=100000)
    owners_skip_queue_caps: bool = setting(False, "Whether [discord] owner_ids may queue past queue_cap and "
                                           "max_unfinished_per_guild (admin roles never do).")
    max_prompt_chars: int = setting(1000, "Longest prompt accepted.", min=1, max=limits.MAX_PROMPT_CHARS)
    max_count: int = setting(4, "Most images one /imagine may ask for.", min=1, max=limits.MAX_COUNT)
    max_job_cost: float = setting(limits.DEFAULT_MAX_JOB_COST, "Largest job accepted, as images x steps x "
                                  "megapixels (1024x1024 = 1.0 megapixel), about proportional to its GPU time. The "
                                  "default lets through every job the default sizes allow (4 x 50 x 1.0) and "
                                  "refuses e.g. 4 images x 50 steps at 2048x2048 (800). 0 = no cap.", min=0)
    max_loras: int = setting(4, "Most LoRAs one job may use: /imagine's lora option and <lora:name:0.8> tags in the "
                             "prompt together. 0 = no LoRAs.", min=0, max=limits.MAX_LORAS)
    max_input_mb: float = setting(8.0, "Largest image attachment /imagine takes as its input, in MB (checked on the "
                                  "attachment's declared size, before it is downloaded).", min=0.1, max=25)


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = setting("sqlite+aiosqlite:///data/fluxbot.db", "SQLAlchemy async URL. SQLite (aiosqlite) by "
                       "default; postgresql+asyncpg://user:pass@host/db to scale out (pip install fluxbot[postgres]).")
    echo: bool = setting(False, "Log every SQL statement (debugging).")
    busy_timeout_s: float = setting(10.0, "SQLite: seconds a write waits while another program holds the database "
                                    "(a backup, a sqlite3 shell) before the request is refused as 'busy'.",
                                    min=0.1, max=600)


@dataclass(frozen=True)
class StorageSettings:
    max_image_age_days: float = setting(0.0, "Delete PNGs older than this; 0 = keep forever. Job records stay; "
                                        "/show regenerates a pruned image from its record. A stored input image "
                                        "(inputs/) goes with the last PNG of the jobs that used it.", min=0)
    max_images_gib: float = setting(20.0, "Delete the oldest PNGs while the images folder is larger than this "
                                    "(roughly 13,000 to 20,000 photo-like 1024² images); 0 = no limit.", min=0)
    prune_interval_min: float = setting(60.0, "Minutes between two pruning passes.", min=1)


@dataclass(frozen=True)
class LoggingSettings:
    level: str = setting("INFO", "Log level of fluxbot's own loggers.",
                         choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    discord_level: str = setting("WARNING", "Log level of discord.py's loggers.",
                                 choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    file: str = setting("data/fluxbot.log", "Rotating log file; empty = log to the console only.")
    max_bytes: int = setting(10 * 1024 * 1024, "Size at which the log file rotates.", min=1024)
    backup_count: int = setting(5, "Rotated log files kept.", min=0, max=100)


@dataclass(frozen=True)
class WebSettings:
    enabled: bool = setting(False, "Serve the web console (docs/web.md) inside `python -m bot run` too, on the bot's "
                            "engine, queue and database; `python -m bot web` serves it without Discord.")
    host: str = setting("127.0.0.1", "Address the web console listens on. 127.0.0.1 = this machine only (reach it "
                        "through an SSH tunnel); any other address needs auth.")
    port: int = setting(6006, "Port of the web console.", min=1, max=65535)
    auth: Secret = setting(Secret(""), "The web console's login as 'user:password'; required when host is not a "
                           "loopback address. Never logged.", env="FLUXBOT_WEB_AUTH")

    def login(self) -> tuple[str, str] | None:
        """(user, password) from `auth`, or None when it is empty; ConfigError when it is not 'user:password'."""
        text = self.auth.reveal()
        if not text:
            return None
        user, colon, password = text.partition(":")
        if not colon or not user.strip() or not password:
            raise ConfigError("[web] auth must be 'user:password' (or the same in env FLUXBOT_WEB_AUTH), with a "
                              "user name and a password")
        return user.strip(), password


@dataclass(frozen=True)
class Config:
    discord: DiscordSettings = dataclasses.field(default_factory=DiscordSettings)
    engine: EngineSettings = dataclasses.field(default_factory=EngineSettings)
    ray: RaySettings = dataclasses.field(default_factory=RaySettings)  # [engine] backend = "ray" (docs/scale-out.md)
    limits: LimitsSettings = dataclasses.field(default_factory=LimitsSettings)
    database: DatabaseSettings = dataclasses.field(default_factory=DatabaseSettings)
    storage: StorageSettings = dataclasses.field(default_factory=StorageSettings)
    logging: LoggingSettings = dataclasses.field(default_factory=LoggingSettings)
    web: WebSettings = dataclasses.field(default_factory=WebSettings)  # the web console (docs/web.md)
    path: str = ""  # the file it came from ("" = defaults only)


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config) if f.name != "path"}


def find_config_path(cli_path: str | None = None) -> Path | None:
    """The file to read: --config, else $FLUXBOT_CONFIG, else ./config.toml if it exists."""
    if cli_path:
        return Path(cli_path)
    if os.environ.get("FLUXBOT_CONFIG"):
        return Path(os.environ["FLUXBOT_CONFIG"])
    default = Path(DEFAULT_PATH)
    return default if default.exists() else None


def load_config(path: str | os.PathLike | None = None, *, env: typing.Mapping[str, str] | None = None,
                require_token: bool = False) -> Config:
    """Read and validate the config. `path` None means "look it up" (see find_config_path)."""
    env = os.environ if env is None else env
    file = find_config_path(str(path) if path else None)
    data: dict[str, Any] = {}
    if file is not None:
        data = _read_toml(file)
    cfg = parse_config(data, env=env, path=str(file or ""))
    if file is not None:
        cfg = anchor_paths(cfg, file.resolve().parent)
    if require_token and not cfg.discord.token:
        raise ConfigError("[discord] token is empty: put the bot token in the config file or in env DISCORD_TOKEN "
                          "(Developer Portal → your application → Bot → Reset Token)")
    return cfg


def anchor_paths(cfg: Config, folder: Path) -> Config:
    """Relative paths in the file mean "beside the config file", whatever the working directory: models_dir,
    images_dir, loras_dir, the log file and a SQLite database file are resolved against `folder`; `model` and
    `base_model` too when they name something that exists there (else models_dir/<value> when that exists, else
    they stay as written: the engine looks in models_dir too)."""
    def beside(value: str) -> str:
        return value if not value or Path(value).expanduser().is_absolute() else str(folder / value)

    def found(value: str, models_dir: str) -> str:
        if not value or value == TINY or Path(value).expanduser().is_absolute():
            return value
        for candidate in (folder / value, Path(models_dir) / value):
            if candidate.exists():
                return str(candidate)
        return value

    eng = cfg.engine
    models_dir = beside(eng.models_dir)
    engine = dataclasses.replace(eng, models_dir=models_dir, images_dir=beside(eng.images_dir),
                                 loras_dir=beside(eng.loras_dir),
                                 model=found(eng.model, models_dir), base_model=found(eng.base_model, models_dir))
    logging_ = dataclasses.replace(cfg.logging, file=beside(cfg.logging.file))
    database = dataclasses.replace(cfg.database, url=_anchor_sqlite(cfg.database.url, folder))
    return dataclasses.replace(cfg, engine=engine, logging=logging_, database=database)


def _anchor_sqlite(url: str, folder: Path) -> str:
    """A SQLite URL whose relative file path is made absolute against `folder`; other URLs unchanged."""
    from sqlalchemy.engine import make_url  # lazy: sqlalchemy takes ~0.3 s; every command loads the config

    try:
        u = make_url(url)
    except Exception:  # a bad URL is reported, naming the key, when the store opens
        return url
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:" \
            or u.database.startswith("file:") or Path(u.database).is_absolute():
        return url
    return u.set(database=str(folder / u.database)).render_as_string(hide_password=False)


def parse_config(data: dict[str, Any], *, env: typing.Mapping[str, str] | None = None, path: str = "") -> Config:
    """Validate a parsed TOML document. Unknown sections and keys are errors (they are usually typos)."""
    env = {} if env is None else env
    sections = {}
    for name, value in data.items():
        home = _section_of(name)
        if name not in SECTIONS and home is not None and not isinstance(value, dict):
            shown = "…" if name == "token" else _show(value)
            raise ConfigError(f"{name} = {shown} is at the top of the file{_where(path)}: put it under [{home}] "
                              f"(a line [{home}] above it)")
        if name not in SECTIONS:
            raise ConfigError(f"unknown section [{name}]{_where(path)}; known sections: {', '.join(SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table (a [{name}] header), not {_show(value)}{_where(path)}")
    for name, cls in SECTIONS.items():
        sections[name] = _parse_section(name, cls, data.get(name, {}), env, path)
    if why := address_problem(sections["ray"].address):
        raise ConfigError(f"[ray] address = {_show(sections['ray'].address)} {why}{_where(path)}")
    return Config(**sections, path=path)


def _section_of(key: str) -> str | None:
    """The section that has `key`, e.g. 'discord' for 'token'; None if none has it."""
    for name, cls in SECTIONS.items():
        if key in {f.name for f in dataclasses.fields(cls)}:
            return name
    return None


def _parse_section(section: str, cls: type, table: dict[str, Any], env: typing.Mapping[str, str], path: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in table:
        if key not in fields:
            home = _section_of(key)
            hint = f"; {key} belongs under [{home}]" if home else f"; known keys: {', '.join(fields)}"
            raise ConfigError(f"[{section}] {key}: unknown key{_where(path)}{hint}")
    values = {}
    for key, f in fields.items():
        meta = f.metadata
        if meta.get("env") and env.get(meta["env"]):
            raw, given = env[meta["env"]], True
        elif key in table:
            raw, given = table[key], True
        else:
            given = False
        if given:
            values[key] = _check(section, key, raw, hints[key], meta, path)
    return cls(**values)


def _check(section: str, key: str, value: Any, hint: Any, meta: typing.Mapping, path: str) -> Any:
    name = f"[{section}] {key}"
    secret = hint is Secret
    shown = "(hidden)" if secret else _show(value)
    base = typing.get_origin(hint) or hint

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{name} = {shown}: {why}{_where(path)}")

    if base is bool:
        if not isinstance(value, bool):
            raise bad("must be true or false")
    elif base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("must be a whole number")
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("must be a number")
        value = float(value)
    elif base in (str, Secret):
        if not isinstance(value, str):
            raise bad("must be a string (in quotes)")
        if secret:
            value = Secret(value.strip())
            if key == "token" and value.reveal().lower().startswith(("bot ", "bearer ")):
                raise bad(f"starts with {value.reveal().split()[0]!r}: give the token alone, in the file or "
                          f"in env DISCORD_TOKEN (discord.py adds 'Bot ' itself; twice, Discord answers 401)")
    elif base is list:
        if not isinstance(value, list):
            raise bad("must be a list, e.g. [] or [1, 2]")
        value = _check_list(key, value, bad)
    elif base is dict:
        value = _check_table(value, bad)
    if meta.get("choices") and value not in meta["choices"]:
        raise bad(f"must be one of {', '.join(map(str, meta['choices']))}")
    if meta.get("min") is not None and value < meta["min"]:
        raise bad(f"must be at least {meta['min']}")
    if meta.get("max") is not None and value > meta["max"]:
        raise bad(f"must be at most {meta['max']}")
    return value


def _check_table(value: Any, bad) -> dict:
    """A table of names to amounts (`[ray] resources = { GPU = 1 }`)."""
    if not isinstance(value, dict):
        raise bad("must be a table, e.g. { GPU = 1 }")
    for name, amount in value.items():
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise bad(f"{name} must be a number of 0 or more, not {_show(amount)}")
    return {name: float(amount) for name, amount in value.items()}


def _check_list(key: str, value: list, bad) -> list:
    if key.endswith("_ids"):
        out = []
        for item in value:  # ids may be written as numbers or as strings of digits (JSON-safe)
            if isinstance(item, str) and item.strip().isdigit():
                item = int(item)
            if isinstance(item, bool) or not isinstance(item, int) or item < 0:
                raise bad(f"every item must be a Discord id (a whole number), not {_show(item)}")
            out.append(item)
        return out
    if not all(isinstance(v, str) for v in value):
        raise bad("every item must be a string")
    return list(value)


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        with open(file, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist: copy config.example.toml to {file} and edit it") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {file} is not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"config file {file} cannot be read: {e.strerror}") from None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _where(path: str) -> str:
    return f" (in {path})" if path else ""


# --- config.example.toml is rendered from the fields above, so that every key is documented -------------

_HEADER = """\
# fluxbot configuration. Copy to config.toml and edit; every key but [discord] token has a default.
# The file is found by --config PATH, else env FLUXBOT_CONFIG, else ./config.toml.
# Rendered from bot/config.py and engine/settings.py by `python -m bot.config > config.example.toml`;
# a test checks that the two stay equal.
"""


def render_example() -> str:
    """The text of config.example.toml: every section and key, its doc as a comment, its default."""
    out = [_HEADER]
    for name, cls in SECTIONS.items():
        out.append(f"\n[{name}]")
        for f in dataclasses.fields(cls):
            doc = f.metadata.get("doc", "")
            if f.metadata.get("env"):
                doc += f" (env {f.metadata['env']})"
            out.extend("# " + line for line in _wrap(doc))
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            out.append(f"{f.name} = {_toml_value(default)}")
    return "\n".join(out) + "\n"


def _wrap(text: str, width: int = 110) -> list[str]:
    return textwrap.wrap(text, width=width) or [""]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Secret):
        return '""'
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        keys = [k if k.replace("_", "").replace("-", "").isalnum() else _toml_value(k) for k in value]
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in zip(keys, value.values())) + " }" if value else "{}"
    raise TypeError(f"no TOML form for {value!r}")


if __name__ == "__main__":
    print(render_example(), end="")
