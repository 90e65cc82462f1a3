"""Logging: a console handler in discord.py's style (colour on a terminal), a rotating log file, levels
from `[logging]`, and a filter on both handlers that masks the bot token, anything shaped like a Discord
token, and interaction tokens (in webhook/interaction URLs and "token" fields) in every record (message,
arguments, traceback, stack).

Call `setup_logging(cfg.logging, secrets=[cfg.discord.token.reveal()])` once at start-up, and start
discord.py with `log_handler=None` so that it does not add a second, unmasked handler.
"""
from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import TextIO

from bot.config import LoggingSettings

log = logging.getLogger(__name__)

FLUXBOT_LOGGERS = ("bot", "engine", "db", "__main__")
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
PLAIN_FORMAT = "[{asctime}] [{levelname:<8}] {name}: {message}"
MASK = "[token hidden]"
# A Discord bot token: base64 user id . base64 timestamp . HMAC (e.g. "MTIz...A.Gxyz12.abc..."), and
# the "Bot <token>" / "Bearer <token>" forms that end up in HTTP debug logs.
DISCORD_TOKEN = re.compile(r"(?<![\w-])[\w-]{23,28}\.[\w-]{6,7}\.[\w-]{27,40}(?![\w-])", re.ASCII)
# Interaction tokens (valid 15 min, enough to post as the bot in that channel): in URLs that discord.py logs at
# DEBUG (`/webhooks/<application id>/<token>`, `/interactions/<id>/<token>/callback`) and as the "token" key of
# the INTERACTION_CREATE payloads its gateway logs at DEBUG (a dict repr or JSON).
# Both handlers run the mask on the same record, so it must leave an already masked line as it is.
INTERACTION_TOKEN_URL = re.compile(r"(/(?:webhooks|interactions)/\d+/)(?!" + re.escape(MASK) + r")[^/?#\s'\"]+")
TOKEN_FIELD = re.compile(r"""(['"]token['"]\s*:\s*['"])[^'"]+""")
_MARK = "_fluxbot_handler"


class SecretMaskFilter(logging.Filter):
    """Rewrites each record so that no given secret and nothing shaped like a Discord token remains."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        # Longest first, so that a secret containing another is masked whole; short strings are ignored
        # (masking "a" would garble every message).
        self.secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        text = INTERACTION_TOKEN_URL.sub(rf"\g<1>{MASK}", text)
        text = TOKEN_FIELD.sub(rf"\g<1>{MASK}", text)
        return DISCORD_TOKEN.sub(MASK, text)

    def filter(self, record: logging.LogRecord) -> bool:
        # 1. The message with its arguments merged in, so that a token passed as an argument is caught.
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the raw pieces, masked
            message = f"{record.msg} {record.args}"
        record.msg, record.args = self.mask(message), None
        # 2. The traceback, formatted once here; formatters print exc_text when it is set.
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True


class ColourFormatter(logging.Formatter):
    """discord.py's console look: dim time, coloured level, magenta logger name, red tracebacks."""

    COLOURS = {logging.DEBUG: "\x1b[40;1m", logging.INFO: "\x1b[34;1m", logging.WARNING: "\x1b[33;1m",
               logging.ERROR: "\x1b[31m", logging.CRITICAL: "\x1b[41m"}

    def __init__(self):
        super().__init__(datefmt=DATE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        colour = self.COLOURS.get(record.levelno, self.COLOURS[logging.DEBUG])
        head = (f"\x1b[30;1m{self.formatTime(record, self.datefmt)}\x1b[0m {colour}{record.levelname:<8}\x1b[0m "
                f"\x1b[35m{record.name}\x1b[0m {record.getMessage()}")
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            head += f"\n\x1b[31m{record.exc_text}\x1b[0m"
        if record.stack_info:
            head += "\n" + self.formatStack(record.stack_info)
        return head


@dataclass
class LoggingHandles:
    """The handlers `setup_logging` installed on the root logger; `close()` removes them again and puts
    the logger levels back as they were."""
    console: logging.Handler
    file: RotatingFileHandler | None
    file_path: Path | None
    mask: SecretMaskFilter
    previous_levels: dict[str, int]

    def fatal(self, message: str) -> None:
        """Write why the bot stops to the log file only (the caller shows the same line on the console once)."""
        if self.file is None:
            return
        record = logging.getLogger("bot").makeRecord("bot", logging.CRITICAL, __file__, 0, message, None, None)
        if self.mask.filter(record):
            self.file.handle(record)

    def close(self) -> None:
        root = logging.getLogger()
        for handler in (self.console, self.file):
            if handler is not None:
                root.removeHandler(handler)
                handler.close()
        for name, level in self.previous_levels.items():
            logging.getLogger(name or None).setLevel(level)


def setup_logging(settings: LoggingSettings, data_dir: str | os.PathLike | None = None, *,
                  secrets: Iterable[str] = (), stream: TextIO | None = None) -> LoggingHandles:
    """Install the console and file handlers on the root logger and set the levels.

    `data_dir` is the folder a relative `[logging] file` is resolved against (default: the working
    directory); `secrets` are strings to mask besides token-shaped ones (pass the revealed bot token)."""
    root = logging.getLogger()
    # 1. Replace handlers from an earlier call (tests, a restart in the same process).
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    mask = SecretMaskFilter(secrets)

    # 2. Console: colour when the stream is a terminal, like discord.utils.setup_logging.
    import discord.utils  # lazy: discord takes ~0.5 s; bot.doctor imports this module for its token pattern only

    stream = sys.stderr if stream is None else stream
    console = logging.StreamHandler(stream)
    console.setFormatter(ColourFormatter() if discord.utils.stream_supports_colour(stream)
                         else logging.Formatter(PLAIN_FORMAT, DATE_FORMAT, style="{"))
    console.addFilter(mask)
    setattr(console, _MARK, True)
    root.addHandler(console)

    # 3. The rotating file, its folder created.
    file_handler, path = None, None
    if settings.file:
        path = Path(settings.file)
        if not path.is_absolute() and data_dir is not None:
            path = Path(data_dir) / path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            file_handler = RotatingFileHandler(path, maxBytes=settings.max_bytes, backupCount=settings.backup_count,
                                               encoding="utf-8")
        except OSError as e:
            log.error("cannot write the log file %s (%s): logging to the console only; fix [logging] file",
                      path, e.strerror)
            path = None
        else:
            file_handler.setFormatter(logging.Formatter(PLAIN_FORMAT, DATE_FORMAT, style="{"))
            file_handler.addFilter(mask)
            setattr(file_handler, _MARK, True)
            root.addHandler(file_handler)

    # 4. Levels: fluxbot's own loggers, discord.py's, and WARNING for every other library.
    previous = {name: logging.getLogger(name or None).level for name in ("", "discord", *FLUXBOT_LOGGERS)}
    root.setLevel(logging.WARNING)
    for name in FLUXBOT_LOGGERS:
        logging.getLogger(name).setLevel(settings.level)
    logging.getLogger("discord").setLevel(settings.discord_level)
    log.debug("logging to the console%s", f" and {path}" if path else "")
    return LoggingHandles(console, file_handler, path, mask, previous)
