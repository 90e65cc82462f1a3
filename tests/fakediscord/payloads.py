"""JSON payloads with every key discord.py 2.7 reads (a missing one is a KeyError inside the client)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .ids import iso
from .records import FakeAttachment, FakeChannel, FakeMessage, FakeRole, FakeUser

if TYPE_CHECKING:
    from .server import FakeDiscord

log = logging.getLogger(__name__)

ALL_PERMISSIONS = (1 << 51) - 1
ADMINISTRATOR = 1 << 3
JOINED_AT = "2025-01-01T00:00:00+00:00"


def user(u: FakeUser) -> dict:
    return {"id": str(u.id), "username": u.name, "global_name": u.name, "discriminator": "0",
            "avatar": None, "bot": u.bot, "public_flags": 0, "flags": 0, "system": False,
            "banner": None, "accent_color": None, "avatar_decoration_data": None}


def member(u: FakeUser, permissions: int | None = None, *, with_user: bool = True) -> dict:
    data: dict[str, Any] = {"roles": [str(r) for r in u.role_ids], "joined_at": JOINED_AT, "deaf": False,
                            "mute": False, "flags": 0, "pending": False, "nick": u.nick, "avatar": None,
                            "premium_since": None, "communication_disabled_until": None}
    if with_user:
        data["user"] = user(u)
    if permissions is not None:
        data["permissions"] = str(permissions)
    return data


def role(r: FakeRole) -> dict:
    return {"id": str(r.id), "name": r.name, "permissions": str(r.permissions), "position": r.position,
            "color": 0, "colors": {"primary_color": 0}, "hoist": False, "managed": False,
            "mentionable": False, "flags": 0, "icon": None, "unicode_emoji": None}


def channel(c: FakeChannel, fake: "FakeDiscord") -> dict:
    if c.guild_id is None:
        recipient = fake.users[c.recipient_id] if c.recipient_id in fake.users else None
        return {"id": str(c.id), "type": 1, "last_message_id": None,
                "recipients": [user(recipient)] if recipient else []}
    return {"id": str(c.id), "type": c.type, "guild_id": str(c.guild_id), "name": c.name,
            "position": c.position, "permission_overwrites": [], "nsfw": False, "parent_id": None,
            "topic": None, "rate_limit_per_user": 0, "last_message_id": None, "flags": 0}


GUILD_PRESENCES = 1 << 8


def guild_create(fake: "FakeDiscord", intents: int = GUILD_PRESENCES) -> dict:
    """Without the GUILD_PRESENCES intent Discord lists only the bot itself (and voice users) in `members`."""
    everyone = [u for u in fake.users.values() if u.in_guild]
    members = [member(u) for u in everyone if intents & GUILD_PRESENCES or u.id == fake.bot_user.id]
    return {
        "id": str(fake.guild_id), "name": fake.guild_name, "icon": None, "splash": None,
        "discovery_splash": None, "owner_id": str(fake.owner.id), "afk_channel_id": None, "afk_timeout": 300,
        "verification_level": 0, "default_message_notifications": 0, "explicit_content_filter": 0,
        "roles": [role(r) for r in fake.roles.values()], "emojis": [], "stickers": [], "features": [],
        "mfa_level": 0, "application_id": None, "system_channel_id": None, "system_channel_flags": 0,
        "rules_channel_id": None, "max_members": 500000, "vanity_url_code": None, "description": None,
        "banner": None, "premium_tier": 0, "premium_subscription_count": 0, "preferred_locale": "en-US",
        "public_updates_channel_id": None, "nsfw_level": 0, "premium_progress_bar_enabled": False,
        "joined_at": JOINED_AT, "large": False, "unavailable": False, "member_count": len(everyone),
        "voice_states": [], "members": members, "presences": [], "threads": [], "stage_instances": [],
        "guild_scheduled_events": [], "soundboard_sounds": [],
        "channels": [channel(c, fake) for c in fake.channels.values() if c.guild_id == fake.guild_id],
    }


def attachment(a: FakeAttachment) -> dict:
    size = a.size if a.declared_size is None else a.declared_size
    data: dict[str, Any] = {"id": str(a.id), "filename": a.filename, "size": size, "url": a.url,
                            "proxy_url": a.url, "content_type": a.content_type}
    if a.description:
        data["description"] = a.description
    if a.image_size:
        data["width"], data["height"] = a.image_size
    return data


def message(m: FakeMessage, fake: "FakeDiscord") -> dict:
    data: dict[str, Any] = {
        "id": str(m.id), "channel_id": str(m.channel_id), "author": user(fake.bot_user),
        "content": m.content, "timestamp": iso(m.created_at),
        "edited_timestamp": iso(m.state.at) if m.history else None, "tts": False,
        "mention_everyone": False, "mentions": [], "mention_roles": [], "mention_channels": [],
        "attachments": [attachment(a) for a in m.attachments], "embeds": m.embeds, "pinned": False,
        "type": 20 if m.interaction_id and m.kind == "response" else (19 if m.reference_id else 0),
        "flags": m.flags, "components": m.components, "application_id": str(fake.application_id),
    }
    if m.guild_id is not None:
        data["guild_id"] = str(m.guild_id)
    if m.webhook_id is not None:
        data["webhook_id"] = str(m.webhook_id)
    if m.reference_id is not None:
        data["message_reference"] = {"message_id": str(m.reference_id), "channel_id": str(m.channel_id), "type": 0}
    return data


def ready(fake: "FakeDiscord", session_id: str) -> dict:
    return {"v": 10, "user": {**user(fake.bot_user), "verified": True, "mfa_enabled": False, "locale": "en-US"},
            "guilds": [{"id": str(fake.guild_id), "unavailable": True}], "session_id": session_id,
            "resume_gateway_url": fake.gateway_url, "application": {"id": str(fake.application_id), "flags": 0},
            "private_channels": [], "relationships": [], "presences": [], "shard": [0, 1],
            "_trace": ["fakediscord"]}


def application(fake: "FakeDiscord") -> dict:
    return {"id": str(fake.application_id), "name": fake.bot_user.name, "description": "fakediscord test app",
            "icon": None, "bot_public": True, "bot_require_code_grant": False, "owner": user(fake.owner),
            "verify_key": "0" * 64, "team": None, "summary": "", "flags": 0, "rpc_origins": [],
            "bot": user(fake.bot_user), "interactions_endpoint_url": None, "tags": []}


def interaction(fake: "FakeDiscord", *, ix_id: int, token: str, ix_type: int, data: dict, who: FakeUser,
                ch: FakeChannel, message_payload: dict | None) -> dict:
    payload: dict[str, Any] = {
        "id": str(ix_id), "application_id": str(fake.application_id), "type": ix_type, "data": data,
        "token": token, "version": 1, "channel_id": str(ch.id), "channel": channel(ch, fake),
        "app_permissions": str(fake.app_permissions), "locale": "en-US", "entitlements": [],
        "entitlement_sku_ids": [], "attachment_size_limit": fake.attachment_size_limit,
    }
    if ch.guild_id is not None:
        payload.update(guild_id=str(ch.guild_id), guild={"id": str(ch.guild_id), "locale": "en-US", "features": []},
                       member=member(who, fake.permissions_of(who)), guild_locale="en-US", context=0,
                       authorizing_integration_owners={"0": str(ch.guild_id)})
    else:
        payload.update(user=user(who), context=1, authorizing_integration_owners={"0": "0"})
    if message_payload is not None:
        payload["message"] = message_payload
    return payload
