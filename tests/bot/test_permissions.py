"""Who may generate, cancel and delete: owners, admin roles, allowed channels/roles, DMs."""
import pytest

from bot.config import DiscordSettings
from bot.permissions import Caller, PermissionDenied, check_may_generate, check_may_manage, is_admin


def caller(user=1, guild=10, channel=100, roles=()):
    return Caller(user_id=user, guild_id=guild, channel_id=channel, role_ids=frozenset(roles))


def test_owner_and_admin_role():
    s = DiscordSettings(owner_ids=[7], admin_role_ids=[55])
    assert is_admin(s, caller(user=7))
    assert is_admin(s, caller(user=7, guild=None))
    assert is_admin(s, caller(roles=[55]))
    assert not is_admin(s, caller(roles=[55], guild=None))  # a role means nothing in DMs
    assert not is_admin(s, caller(roles=[56]))


def test_channels_roles_and_dms_restrict_generation():
    s = DiscordSettings(allowed_channel_ids=[100], allowed_role_ids=[9], allow_dms=False, owner_ids=[7])
    check_may_generate(s, caller(roles=[9]))
    with pytest.raises(PermissionDenied, match="not enabled in this channel; use <#100>"):
        check_may_generate(s, caller(channel=101, roles=[9]))
    with pytest.raises(PermissionDenied, match="roles allowed"):
        check_may_generate(s, caller(roles=[8]))
    with pytest.raises(PermissionDenied, match="direct messages"):
        check_may_generate(s, caller(guild=None))
    check_may_generate(s, caller(user=7, channel=555))  # owners anywhere
    check_may_generate(DiscordSettings(), caller(guild=None))  # DMs allowed by default


def test_only_owner_of_the_job_or_admin_may_manage():
    s = DiscordSettings(owner_ids=[7])
    check_may_manage(s, caller(user=1), owner_id=1, action="delete")
    check_may_manage(s, caller(user=7), owner_id=1, action="delete")
    with pytest.raises(PermissionDenied, match="Only the person who asked for this job or an admin may delete it"):
        check_may_manage(s, caller(user=2), owner_id=1, action="delete")
