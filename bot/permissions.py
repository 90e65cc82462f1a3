"""Who may do what: owners, admins, allowed channels and roles, DMs. Checked on the server side at every entry
point (slash command, button, modal), never trusted to Discord's command permissions alone.

- Owners (`[discord] owner_ids`) are admins everywhere, over every job (DM jobs included).
- Role admins (`admin_role_ids`) are admins only in the guild where they hold the role, and only over the jobs
  made in that guild (`is_admin_of`): never over another guild's jobs or DM jobs.
- DMs: generating there needs `allow_dms`; while `allowed_channel_ids` or `allowed_role_ids` restrict the guilds,
  also `allow_dms_when_restricted` (a DM has no channel or role to check).
"""
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


def is_owner(settings: DiscordSettings, caller: Caller) -> bool:
    return caller.user_id in settings.owner_ids


def is_admin(settings: DiscordSettings, caller: Caller) -> bool:
    """An admin where the caller is now: owners everywhere; admin roles only inside their guild. For acting on a
    job, use `is_admin_of` (a role admin is no admin of other guilds' jobs)."""
    if is_owner(settings, caller):
        return True
    return not caller.in_dm and bool(caller.role_ids & set(settings.admin_role_ids))


def is_admin_of(settings: DiscordSettings, caller: Caller, job_guild_id: int | None) -> bool:
    """Whether the caller is an admin over a job made in `job_guild_id` (None: in a DM): owners over every job;
    a role admin over the jobs of the guild where they hold the role, and they must act from that guild."""
    if is_owner(settings, caller):
        return True
    return job_guild_id is not None and job_guild_id == caller.guild_id and is_admin(settings, caller)


def check_may_generate(settings: DiscordSettings, caller: Caller) -> None:
    """Raise PermissionDenied unless the caller may start a job where they are."""
    # 1. Admins may generate anywhere.
    if is_admin(settings, caller):
        return
    # 2. DMs: only when the config allows them, and, while channels or roles are restricted, allows them
    #    explicitly (a DM has neither a channel nor roles to check).
    if caller.in_dm:
        if not settings.allow_dms:
            raise PermissionDenied("Image generation is not available in direct messages; use it in a server channel.")
        if (settings.allowed_channel_ids or settings.allowed_role_ids) and not settings.allow_dms_when_restricted:
            raise PermissionDenied("Image generation is limited to some channels or roles of the server, so it is not "
                                   "available in direct messages; use it in a server channel.")
        return
    # 3. Channels and roles, when the config restricts them.
    if settings.allowed_channel_ids and caller.channel_id not in settings.allowed_channel_ids:
        shown = ", ".join(f"<#{c}>" for c in settings.allowed_channel_ids)
        raise PermissionDenied(f"Image generation is not enabled in this channel; use {shown}.")
    if settings.allowed_role_ids and not (caller.role_ids & set(settings.allowed_role_ids)):
        raise PermissionDenied("You need one of the roles allowed to generate images; ask a server admin.")


def check_may_manage(settings: DiscordSettings, caller: Caller, owner_id: int, action: str, *,
                     job_guild_id: int | None) -> None:
    """Raise PermissionDenied unless the caller owns the job or is an admin over it (cancel, delete)."""
    if caller.user_id != owner_id and not is_admin_of(settings, caller, job_guild_id):
        raise PermissionDenied(f"Only the person who asked for this job or an admin of its server may {action} it.")


@dataclass(frozen=True)
class ShownJob:
    """The facts about a job that decide who may post it again (/show)."""
    owner_id: int
    guild_id: int | None
    channel_id: int | None
    deleted: bool


def check_may_show(settings: DiscordSettings, caller: Caller, job: ShownJob, job_id: int) -> None:
    """Raise PermissionDenied unless the caller may post this job publicly where they are: their own job; a job
    made in this very channel (unless it was deleted); or any job of a guild they are an admin of (owners: any
    job). Whether its PNG is still on disk changes nothing here."""
    if caller.user_id == job.owner_id or is_admin_of(settings, caller, job.guild_id):
        return
    if job.channel_id is not None and job.channel_id == caller.channel_id and not job.deleted:
        return
    raise PermissionDenied(f"Job #{job_id} cannot be shown here: you may show your own jobs, and others' jobs "
                           f"only in the channel where they were made.")


def history_guild(settings: DiscordSettings, caller: Caller, user_id: int) -> int | None:
    """Which of `user_id`'s jobs the caller may list: None = all of them (their own history, or an owner); a
    guild id = only the jobs made in the guild where the caller is a role admin. PermissionDenied for anyone
    else."""
    if user_id == caller.user_id or is_owner(settings, caller):
        return None
    if is_admin(settings, caller):  # a role admin, and so in their guild
        return caller.guild_id
    raise PermissionDenied("Only admins may look at another user's history.")
