"""Who can reach the console: 127.0.0.1 (this machine) unless told otherwise, and any address other machines can reach
only with a login. Light (no gradio): `python -m bot run` checks `[web]` with it before anything starts."""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field

from bot.config import Config, ConfigError, LimitsSettings

log = logging.getLogger(__name__)


class ConsoleExposed(ConfigError):
    """The console would listen beyond this machine without a login. `str(err)` says what to set."""


@dataclass(frozen=True)
class ServeOptions:
    """Where the console listens and who may log in (`auth`: user and password, or None on loopback only)."""
    host: str = "127.0.0.1"
    port: int = 6006
    auth: tuple[str, str] | None = field(default=None, repr=False)
    max_upload_mb: float = field(default_factory=lambda: LimitsSettings().max_input_mb)  # as Discord attachments

    @property
    def exposed(self) -> bool:
        return not is_loopback(self.host)

    @property
    def secrets(self) -> list[str]:
        """What the log must never show (bot.logging_setup masks it)."""
        return [self.auth[1]] if self.auth else []


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_exposure(options: ServeOptions) -> None:
    """Refuse a console that other machines could reach without a login."""
    if options.exposed and options.auth is None:
        raise ConsoleExposed(f"[web] host = {options.host!r} lets other machines reach the console: set [web] auth "
                             f"('user:password', or the environment variable FLUXBOT_WEB_AUTH), or keep host = "
                             f"'127.0.0.1' and use an SSH tunnel (docs/web.md)")


def log_exposure(options: ServeOptions) -> None:
    """Say in the log that other machines can reach the console, and who logs in; never the password."""
    if options.exposed:
        log.warning("the web console listens on %s:%d, reachable from other machines; a login (user %r) protects "
                    "it", options.host, options.port, options.auth[0] if options.auth else None)


def serve_options(config: Config) -> ServeOptions:
    """`[web]` as ServeOptions, checked: a bad `auth` or an exposed address without one is a ConfigError."""
    web = config.web
    options = ServeOptions(host=web.host, port=web.port, auth=web.login(), max_upload_mb=config.limits.max_input_mb)
    check_exposure(options)
    return options
