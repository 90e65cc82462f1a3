"""Who may generate, cancel and delete: owners, admin roles, allowed channels/roles, DMs."""
import pytest

from bot.config import DiscordSettings
from bot.permissions import (Caller, PermissionDenied, ShownJob, check_may_generate, check_may_manage, check_may_show,
                             history_guild, is_admin, is_admin_of)


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
    check_may_manage(s, caller(user=1), owner_id=1, action="delete", job_guild_id=10)
    check_may_manage(s, caller(user=7), owner_id=1, action="delete", job_guild_id=10)
    with pytest.raises(PermissionDenied, match="Only the person who asked for this job or an admin of its server "
                                               "may delete it"):
        check_may_manage(s, caller(user=2), owner_id=1, action="delete", job_guild_id=10)


def test_a_role_admin_is_admin_of_their_own_guilds_jobs_only():
    s = DiscordSettings(owner_ids=[7], admin_role_ids=[55])
    mod = caller(user=2, guild=10, roles=[55])
    assert is_admin_of(s, mod, 10)
    assert not is_admin_of(s, mod, 20)     # another guild's job
    assert not is_admin_of(s, mod, None)   # a DM job
    assert is_admin_of(s, caller(user=7, guild=None), 20) and is_admin_of(s, caller(user=7), None)  # owners: all
    with pytest.raises(PermissionDenied):
        check_may_manage(s, mod, owner_id=1, action="cancel", job_guild_id=20)
    assert history_guild(s, mod, 1) == 10 and history_guild(s, caller(user=7), 1) is None
    assert history_guild(s, caller(user=1), 1) is None
    with pytest.raises(PermissionDenied, match="Only admins"):
        history_guild(s, caller(user=3), 1)


def test_dms_are_refused_while_channels_or_roles_are_restricted_unless_allowed_explicitly():
    dm = caller(guild=None, channel=900)
    for restricted in ({"allowed_channel_ids": [100]}, {"allowed_role_ids": [9]}):
        with pytest.raises(PermissionDenied, match="not available in direct messages"):
            check_may_generate(DiscordSettings(**restricted), dm)
        check_may_generate(DiscordSettings(**restricted, allow_dms_when_restricted=True), dm)
        with pytest.raises(PermissionDenied, match="direct messages"):  # allow_dms=false still wins
            check_may_generate(DiscordSettings(**restricted, allow_dms_when_restricted=True, allow_dms=False), dm)
    check_may_generate(DiscordSettings(allowed_role_ids=[9], owner_ids=[7]), caller(user=7, guild=None))


def test_show_own_jobs_anywhere_others_only_in_their_channel_or_by_their_guilds_admin():
    s = DiscordSettings(owner_ids=[7], admin_role_ids=[55])
    job = ShownJob(owner_id=1, guild_id=10, channel_id=100, deleted=False)
    check_may_show(s, caller(user=1, channel=101), job, 5)                 # own job, another channel
    check_may_show(s, caller(user=2, channel=100), job, 5)                 # the channel it was made in
    check_may_show(s, caller(user=3, channel=101, roles=[55]), job, 5)     # an admin of its guild
    check_may_show(s, caller(user=7, guild=None), job, 5)                  # an owner
    refused = [caller(user=2, channel=101),                                # same guild, another channel
               caller(user=3, guild=20, channel=200, roles=[55]),          # another guild's admin
               caller(user=2, guild=None, channel=900)]                    # a DM
    for who in refused:
        with pytest.raises(PermissionDenied, match="Job #5 cannot be shown here"):
            check_may_show(s, who, job, 5)
    with pytest.raises(PermissionDenied):                                  # deleted: not for the channel
        check_may_show(s, caller(user=2, channel=100), ShownJob(1, 10, 100, deleted=True), 5)
