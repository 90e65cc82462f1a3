"""Answering users when something is refused or goes wrong: one place for every entry point.

Expected refusals (a bad option, no permission, a limit) carry a message written for the user and are shown
as is. Anything else is a bug or an outage: the user gets a short ephemeral message with a reference, the
log gets the trace under the same reference. Nothing here ever prints the token.
"""
from __future__ import annotations

import logging
import secrets
from typing import Awaitable, Callable

import discord
from discord import app_commands

from bot.permissions import PermissionDenied
from bot.admission_errors import AdmissionError
from bot.validation import InvalidRequest
from db.errors import is_store_busy
from db.guard import DatabaseGone
from engine.errors import EngineError

log = logging.getLogger(__name__)


STORE_BUSY = ("The bot's database is busy right now (another program is holding it), so nothing was changed. "
              "Try again in a minute.")


class UserFacingError(Exception):
    """A refusal whose message is written for the user (e.g. "that job does not exist")."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Errors whose message is meant for the user, including the jobs service's admission errors and the store's
    refusal once its file was deleted or replaced (db.guard)."""
    return (UserFacingError, InvalidRequest, PermissionDenied, AdmissionError, EngineError, DatabaseGone)


def store_busy(error: BaseException) -> bool:
    """SQLite still locked by another program after `[database] busy_timeout_s` (nothing was written)."""
    return is_store_busy(error)


async def send_ephemeral(interaction: discord.Interaction, text: str, **kwargs) -> None:
    """An ephemeral message, whether or not the interaction was answered already."""
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True, **kwargs)
    else:
        await interaction.response.send_message(text, ephemeral=True, **kwargs)


async def report_error(interaction: discord.Interaction, error: BaseException) -> None:
    """Show the user a short ephemeral message; log the trace of anything unexpected."""
    # 1. Unwrap what discord.py wraps around the real error.
    while isinstance(error, (app_commands.CommandInvokeError, app_commands.TransformerError)) and \
            error.__cause__ is not None:
        error = error.__cause__
    # 2. Pick the message.
    if isinstance(error, user_error_types()):
        text = str(error)
        log.info("refused %s for user %s: %s", _what(interaction), interaction.user.id, text)
    elif isinstance(error, app_commands.CheckFailure):
        text = "You may not use this command here."
        log.info("check failed %s for user %s: %s", _what(interaction), interaction.user.id, error)
    elif store_busy(error):
        text = STORE_BUSY
        log.warning("store busy %s for user %s: another program held the database past [database] "
                    "busy_timeout_s", _what(interaction), interaction.user.id)
    else:
        ref = secrets.token_hex(3)
        text = f"Something went wrong on the bot's side (ref {ref}). The owner can find it in the log."
        log.error("error %s in %s for user %s", ref, _what(interaction), interaction.user.id,
                  exc_info=(type(error), error, error.__traceback__))
    # 3. Tell the user; if even that fails (token gone), the log has it.
    try:
        await send_ephemeral(interaction, text)
    except discord.HTTPException as e:
        log.warning("could not tell user %s about an error (HTTP %s)", interaction.user.id, e.status)


async def guarded(interaction: discord.Interaction, action: Callable[[], Awaitable[object]]) -> None:
    """Run a button or modal action; every error ends in `report_error`."""
    try:
        await action()
    except Exception as e:
        await report_error(interaction, e)


def _what(interaction: discord.Interaction) -> str:
    if interaction.command is not None:
        return f"/{interaction.command.qualified_name}"
    data = interaction.data or {}
    return str(data.get("custom_id") or data.get("name") or interaction.type.name)
