"""Who may do what: admins, allowed channels and roles, DMs. Checked on the server side at every entry point
(slash command, button, modal), never trusted to Discord's command permissions alone."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import discord

from bot.config import DiscordSettings

log = logging.getLogger(__name__)


class PermissionDenied(Exception):
    """The caller may not do this. The message is shown to the user as is."""


@dataclass(frozen=True)
class Caller:
    """The facts about who clicked or typed that the checks need."""
    user_id: int
    guild_id: int | None
    channel_id: int | None
    role_ids: frozenset[int]

    @property
    def in_dm(self) -> bool:
        return self.guild_id is None


def caller_of(interaction: discord.Interaction) -> Caller:
    """The Caller of an interaction (a Member carries its roles; a DM user has none)."""
    user = interaction.user
    roles = frozenset(r.id for r in getattr(user, "roles", ()) or ())
    return Caller(user_id=user.id, guild_id=interaction.guild_id, channel_id=interaction.channel_id,
                  role_ids=roles)


def is_admin(settings: DiscordSettings, caller: Caller) -> bool:
    """Owners are admins everywhere; admin roles count only inside a guild."""
    if caller.user_id in settings.owner_ids:
        return True
    return not caller.in_dm and bool(caller.role_ids & set(settings.admin_role_ids))


def check_may_generate(settings: DiscordSettings, caller: Caller) -> None:
    """Raise PermissionDenied unless the caller may start a job where they are."""
    # 1. Admins may generate anywhere.
    if is_admin(settings, caller):
        return
    # 2. DMs: only when the config allows them.
    if caller.in_dm:
        if not settings.allow_dms:
            raise PermissionDenied("Image generation is not available in direct messages; use it in a server channel.")
        return
    # 3. Channels and roles, when the config restricts them.
    if settings.allowed_channel_ids and caller.channel_id not in settings.allowed_channel_ids:
        shown = ", ".join(f"<#{c}>" for c in settings.allowed_channel_ids)
        raise PermissionDenied(f"Image generation is not enabled in this channel; use {shown}.")
    if settings.allowed_role_ids and not (caller.role_ids & set(settings.allowed_role_ids)):
        raise PermissionDenied("You need one of the roles allowed to generate images; ask a server admin.")


def check_may_manage(settings: DiscordSettings, caller: Caller, owner_id: int, action: str) -> None:
    """Raise PermissionDenied unless the caller owns the job or is an admin (cancel, delete)."""
    if caller.user_id != owner_id and not is_admin(settings, caller):
        raise PermissionDenied(f"Only the person who asked for this job or an admin may {action} it.")
