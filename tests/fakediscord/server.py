"""FakeDiscord: a Discord REST API and gateway on loopback that a real discord.py client talks to.

See README.md in this folder for the harness API.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any, Callable, TypeVar

from aiohttp import web

from . import payloads
from .faults import Fault, FaultList
from .gateway import GatewaySession
from .ids import SnowflakeFactory, new_token
from .interaction import AUTOCOMPLETE, COMPONENT, MODAL_SUBMIT, SLASH, FakeInteraction
from .options import build_command_data, modal_submit_components
from .ratelimits import RateLimit, RateLimits
from .records import (FakeAttachment, FakeChannel, FakeMessage, FakeRole, FakeUser, MessageState,
                      RecordedRequest)
from .rest import RestApi

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_TOKEN = "fakediscord.bot.token"
# @everyone: view channel, send messages, embed links, attach files, read history, use application commands
_EVERYONE_PERMS = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 31)


class FakeDiscord:
    """State of one fake Discord: a guild with a text channel, users, commands, messages, interactions."""

    def __init__(self, *, token: str = DEFAULT_TOKEN, guild_name: str = "fake guild",
                 response_deadline_s: float | None = 3.0, token_ttl_s: float = 15 * 60,
                 attachment_size_limit: int = 10 * 1024 * 1024, latency_s: float = 0.0) -> None:
        # 1. settings a test may change at any time
        self.token = token
        self.response_deadline_s = response_deadline_s  # None: never refuse a late initial response
        self.token_ttl_s = token_ttl_s
        self.attachment_size_limit = attachment_size_limit
        self.latency_s = latency_s                      # added to every REST request
        self.app_permissions = payloads.ALL_PERMISSIONS & ~payloads.ADMINISTRATOR
        # 2. the world
        self._ids = SnowflakeFactory()
        self.guild_id = self._ids.next()
        self.guild_name = guild_name
        self.application_id = self._ids.next()
        self.bot_user = FakeUser(self.application_id, "fluxbot-test", bot=True)
        self.users: dict[int, FakeUser] = {self.bot_user.id: self.bot_user}
        self.roles: dict[int, FakeRole] = {self.guild_id: FakeRole(self.guild_id, "@everyone", _EVERYONE_PERMS, 0)}
        self.channels: dict[int, FakeChannel] = {}
        self.owner = self.add_user("owner")
        self.channel = self.add_channel("general")
        # 3. records
        self.global_commands: dict[str, dict] = {}
        self.guild_commands: dict[int, dict[str, dict]] = {}
        self.command_syncs = 0
        self.messages: list[FakeMessage] = []
        self.messages_by_id: dict[int, FakeMessage] = {}
        self.attachments: dict[int, FakeAttachment] = {}
        self.interactions: dict[int, FakeInteraction] = {}
        self._by_token: dict[str, FakeInteraction] = {}
        self.requests: list[RecordedRequest] = []
        self.unknown_routes: list[str] = []
        self.faults = FaultList()
        self.ratelimits = RateLimits()
        self.sessions: list[GatewaySession] = []
        self.sessions_by_id: dict[str, GatewaySession] = {}
        self.identify_count = 0
        self.resume_count = 0
        # 4. server
        self._clock_offset = 0.0
        self._cond: asyncio.Condition | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._saved: dict[str, Any] | None = None

    # ---- lifecycle --------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> "FakeDiscord":
        """Serve REST and gateway on a random loopback port."""
        self._cond = asyncio.Condition()
        rest = RestApi(self)
        app = web.Application(middlewares=[rest.middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        rest.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.host = host
        log.info("fakediscord listening on %s", self.http_url)
        return self

    async def stop(self) -> None:
        self.unpatch()
        for s in list(self.sessions):
            await s.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.http_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}/gateway"

    def patch(self) -> None:
        """Point discord.py at this fake: discord.http.Route.BASE (webhooks and interactions use the same
        Route) and DiscordWebSocket.DEFAULT_GATEWAY. `unpatch()` (also done by `stop()`) restores them."""
        import discord.gateway
        import discord.http
        import yarl

        if self._saved is None:
            self._saved = {"base": discord.http.Route.BASE, "gateway": discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY}
        discord.http.Route.BASE = self.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)

    def unpatch(self) -> None:
        if self._saved is None:
            return
        import discord.gateway
        import discord.http

        discord.http.Route.BASE = self._saved["base"]
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = self._saved["gateway"]
        self._saved = None

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        session = GatewaySession(self, ws)
        self.sessions.append(session)
        self.sessions_by_id[session.session_id] = session
        try:
            await session.run()
        finally:
            self.sessions.remove(session)
            await self.notify()
        return ws

    # ---- clock and waiting ------------------------------------------------------------------
    def clock(self) -> float:
        """Unix time plus whatever `advance()` added."""
        return time.time() + self._clock_offset

    def advance(self, seconds: float) -> None:
        """Move the fake clock: interaction tokens older than 15 min expire, late responses are refused."""
        self._clock_offset += seconds

    async def notify(self) -> None:
        if self._cond is None:
            return
        async with self._cond:
            self._cond.notify_all()

    async def wait_until(self, fn: Callable[[], T | None], timeout: float, what: str) -> T:
        """Wait until fn() returns something truthy: re-checked after every request and gateway event, and
        every 20 ms for conditions outside the fake (a bot's own state)."""
        assert self._cond is not None, "FakeDiscord.start() first"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._cond:
            while not (result := fn()):
                left = deadline - loop.time()
                if left <= 0:
                    recent = "\n  ".join(repr(m) for m in self.messages[-8:]) or "(none)"
                    raise AssertionError(f"fakediscord: timed out after {timeout}s waiting for {what}. "
                                         f"Last messages:\n  {recent}\nUnknown routes: {self.unknown_routes}")
                try:
                    await asyncio.wait_for(self._cond.wait(), min(left, 0.02))
                except (asyncio.TimeoutError, TimeoutError):
                    pass
            return result

    async def wait_ready(self, timeout: float = 10.0) -> GatewaySession:
        """A client identified and got READY."""
        return await self.wait_until(lambda: next((s for s in self.sessions if s.ready), None), timeout,
                                     "a client to IDENTIFY on the gateway")

    async def wait_message(self, predicate: Callable[[FakeMessage], object], timeout: float = 10.0,
                           channel_id: int | None = None) -> FakeMessage:
        """The first live message anywhere (or in one channel) matching `predicate`."""
        return await self.wait_until(
            lambda: next((m for m in self.messages if not m.deleted and (channel_id is None or m.channel_id == channel_id)
                          and predicate(m)), None), timeout, "a message matching the predicate")

    # ---- the world --------------------------------------------------------------------------
    def add_role(self, name: str, permissions: int = 0) -> FakeRole:
        role = FakeRole(self._ids.next(), name, permissions, position=len(self.roles))
        self.roles[role.id] = role
        return role

    def add_user(self, name: str, roles: list[FakeRole | int | str] | None = None, *, admin: bool = False,
                 in_guild: bool = True) -> FakeUser:
        """A guild member (or, with in_guild=False, a user who only reaches the bot in DMs). Roles may be
        FakeRole, role ids or role names (created on first use). admin=True adds an Administrator role."""
        ids = [self._role(r).id for r in roles or []]
        if admin:
            ids.append(self._role("admin", payloads.ADMINISTRATOR).id)
        user = FakeUser(self._ids.next(), name, ids, in_guild=in_guild)
        self.users[user.id] = user
        return user

    def _role(self, r: FakeRole | int | str, permissions: int = 0) -> FakeRole:
        if isinstance(r, FakeRole):
            return r
        if isinstance(r, int):
            return self.roles[r]
        found = next((x for x in self.roles.values() if x.name == r), None)
        return found or self.add_role(r, permissions)

    def add_channel(self, name: str) -> FakeChannel:
        ch = FakeChannel(self._ids.next(), name, self.guild_id, position=len(self.channels))
        self.channels[ch.id] = ch
        return ch

    def dm_channel(self, user: FakeUser) -> FakeChannel:
        for ch in self.channels.values():
            if ch.guild_id is None and ch.recipient_id == user.id:
                return ch
        ch = FakeChannel(self._ids.next(), f"dm-{user.name}", None, recipient_id=user.id, type=1)
        self.channels[ch.id] = ch
        return ch

    def permissions_of(self, user: FakeUser) -> int:
        perms = self.roles[self.guild_id].permissions
        for rid in user.role_ids:
            perms |= self.roles[rid].permissions
        return payloads.ALL_PERMISSIONS if perms & payloads.ADMINISTRATOR else perms

    # ---- commands ---------------------------------------------------------------------------
    def store_commands(self, guild_id: int | None, commands: list[dict]) -> list[dict]:
        """A bulk overwrite: keep ids of commands whose name stays, echo the stored list."""
        old = self.commands_for(guild_id)
        new: dict[str, dict] = {}
        for c in commands:
            prev = old.get(c["name"])
            stored = {"type": 1, "description": "", "options": [], "default_member_permissions": None,
                      "nsfw": False, **c, "id": prev["id"] if prev else str(self._ids.next()),
                      "application_id": str(self.application_id), "version": str(self._ids.next())}
            if guild_id is not None:
                stored["guild_id"] = str(guild_id)
            new[c["name"]] = stored
        if guild_id is None:
            self.global_commands = new
        else:
            self.guild_commands[guild_id] = new
        self.command_syncs += 1
        log.info("fakediscord: %s commands synced %s", "global" if guild_id is None else f"guild {guild_id}",
                 sorted(new))
        return list(new.values())

    def commands_for(self, guild_id: int | None) -> dict[str, dict]:
        return self.global_commands if guild_id is None else self.guild_commands.get(guild_id, {})

    def command(self, name: str, guild_id: int | None) -> dict:
        """The schema a user's client would use: the guild's own command first, then the global one."""
        found = (self.commands_for(guild_id).get(name) if guild_id else None) or self.global_commands.get(name)
        if found is None:
            raise LookupError(f"no command /{name} registered (global: {sorted(self.global_commands)}, guild: "
                              f"{sorted(self.commands_for(guild_id)) if guild_id else []}); did the bot sync?")
        return found

    # ---- messages (used by the REST handlers) -----------------------------------------------
    def create_message(self, channel_id: int, kind: str, state: MessageState, *, ix: FakeInteraction | None = None,
                       reference_id: int | None = None) -> FakeMessage:
        ch = self.channels[channel_id]
        msg = FakeMessage(id=self._ids.next(), channel_id=channel_id, guild_id=ch.guild_id, author_id=self.bot_user.id,
                          kind=kind, state=state, created_at=self.clock(), interaction_id=ix.id if ix else None,
                          webhook_id=self.application_id if ix else None, reference_id=reference_id)
        self.messages.append(msg)
        self.messages_by_id[msg.id] = msg
        if ix is not None:
            ix.message_ids.append(msg.id)
            if kind == "response":
                ix.original_message_id = msg.id
        return msg

    def store_attachment(self, filename: str, data: bytes, content_type: str | None = None, *,
                         channel_id: int | None = None, description: str | None = None,
                         declared_size: int | None = None) -> FakeAttachment:
        aid = self._ids.next()
        att = FakeAttachment(aid, filename, data, content_type, description,
                             url=f"{self.http_url}/attachments/{channel_id or 0}/{aid}/{filename}",
                             declared_size=declared_size)
        self.attachments[aid] = att
        return att

    def message(self, message_id: int) -> FakeMessage:
        return self.messages_by_id[message_id]

    def channel_messages(self, channel_id: int | None = None) -> list[FakeMessage]:
        """Every message of a channel (default: the guild's text channel), oldest first, deleted included."""
        cid = self.channel.id if channel_id is None else channel_id
        return [m for m in self.messages if m.channel_id == cid]

    async def delete_message(self, msg: FakeMessage, *, by_bot: bool = False) -> None:
        """Delete a message (as a moderator would): later edits of it get 404 Unknown Message (10008)."""
        msg.deleted = True
        if not by_bot and self.sessions:
            data = {"id": str(msg.id), "channel_id": str(msg.channel_id)}
            if msg.guild_id:
                data["guild_id"] = str(msg.guild_id)
            await self.dispatch("MESSAGE_DELETE", data)
        await self.notify()

    def interaction_by_token(self, token: str) -> FakeInteraction | None:
        return self._by_token.get(token)

    # ---- driving the bot --------------------------------------------------------------------
    async def dispatch(self, event: str, data: Any) -> None:
        ready = [s for s in self.sessions if s.ready]
        if not ready:
            raise RuntimeError("fakediscord: no client is connected to the gateway; start the bot first "
                               "(await start_bot(bot)) and keep it running")
        for s in ready:
            await s.dispatch(event, data)

    async def _interact(self, user: FakeUser, ix_type: int, data: dict, ch: FakeChannel,
                        source: FakeMessage | None = None) -> FakeInteraction:
        if not any(s.ready for s in self.sessions):
            await self.dispatch("INTERACTION_CREATE", {})  # raises the "no client connected" error
        ix = FakeInteraction(id=self._ids.next(), token=new_token("ix"), type=ix_type, user=user, channel_id=ch.id,
                             guild_id=ch.guild_id, data=data, created_at=self.clock(), fake=self,
                             source_message_id=source.id if source else None)
        self.interactions[ix.id] = ix
        self._by_token[ix.token] = ix
        msg_payload = payloads.message(source, self) if source is not None else None
        await self.dispatch("INTERACTION_CREATE", payloads.interaction(
            self, ix_id=ix.id, token=ix.token, ix_type=ix_type, data=data, who=user, ch=ch,
            message_payload=msg_payload))
        return ix

    def _where(self, user: FakeUser, channel: FakeChannel | int | None, dm: bool) -> FakeChannel:
        if dm:
            return self.dm_channel(user)
        if channel is None:
            return self.channel
        return channel if isinstance(channel, FakeChannel) else self.channels[int(channel)]

    async def slash(self, user: FakeUser, name: str, options: dict[str, Any] | None = None, *,
                    channel: FakeChannel | int | None = None, dm: bool = False, validate: bool = True) -> FakeInteraction:
        """`user` runs `/name` (subcommands: "group sub") with `options` typed per the synced schema."""
        head, *path = name.split()
        ch = self._where(user, channel, dm)
        data = build_command_data(self, self.command(head, ch.guild_id), path, options or {}, validate=validate)
        return await self._interact(user, SLASH, data, ch)

    async def autocomplete(self, user: FakeUser, name: str, options: dict[str, Any], focused: str, *,
                           channel: FakeChannel | int | None = None, dm: bool = False) -> FakeInteraction:
        """`user` is typing `/name`'s option `focused` (its partial text in `options`, the other options as filled so
        far, unchecked as Discord's client does): the bot answers with choices, `ix.response.data["choices"]`
        (response type 8)."""
        head, *path = name.split()
        ch = self._where(user, channel, dm)
        data = build_command_data(self, self.command(head, ch.guild_id), path, options, validate=False)
        leaves = data["options"]
        while leaves and "options" in leaves[0] and leaves[0].get("type") in (1, 2):
            leaves = leaves[0]["options"]
        for opt in leaves:
            if opt["name"] == focused:
                opt["focused"] = True
        return await self._interact(user, AUTOCOMPLETE, data, ch)

    async def click(self, user: FakeUser, message: FakeMessage, custom_id: str) -> FakeInteraction:
        """`user` presses the button `custom_id` (or with that label) on `message`."""
        comp = message.component(custom_id)
        if comp.type != 2 or comp.disabled or comp.custom_id is None:
            raise ValueError(f"{comp.label!r} on message {message.id} cannot be clicked "
                             f"(type {comp.type}, disabled={comp.disabled}, url={comp.url})")
        if message.deleted:
            raise ValueError(f"message {message.id} was deleted")
        return await self._interact(user, COMPONENT, {"custom_id": comp.custom_id, "component_type": 2},
                                    self.channels[message.channel_id], source=message)

    async def select(self, user: FakeUser, message: FakeMessage, custom_id: str, values: list[str]) -> FakeInteraction:
        """`user` picks `values` in the select menu `custom_id` on `message`."""
        comp = message.component(custom_id)
        return await self._interact(user, COMPONENT, {"custom_id": comp.custom_id, "component_type": comp.type,
                                                      "values": list(values)},
                                    self.channels[message.channel_id], source=message)

    def modal(self, custom_id: str) -> tuple[FakeInteraction, dict]:
        """The latest modal the bot opened with this custom_id, and the interaction that opened it."""
        for ix in reversed(list(self.interactions.values())):
            if ix.response and ix.response.type == 9 and ix.response.data.get("custom_id") == custom_id:
                return ix, ix.response.data
        opened = [ix.response.data.get("custom_id") for ix in self.interactions.values() if ix.response and ix.response.type == 9]
        raise LookupError(f"the bot opened no modal {custom_id!r}; modals opened: {opened}")

    async def submit_modal(self, user: FakeUser, custom_id: str, values: dict[str, Any], *,
                           message: FakeMessage | None = None) -> FakeInteraction:
        """`user` submits the modal `custom_id` the bot opened, with `values` keyed by input custom_id or label.
        `message`: the message whose button opened it (default: the opener's source message)."""
        opener, modal = self.modal(custom_id)
        data = {"custom_id": custom_id, "components": modal_submit_components(modal, values)}
        source = message or (self.messages_by_id.get(opener.source_message_id) if opener.source_message_id else None)
        return await self._interact(user, MODAL_SUBMIT, data, self.channels[opener.channel_id], source=source)

    # ---- time control and faults ------------------------------------------------------------
    def expire_tokens(self, *interactions: FakeInteraction) -> None:
        """Expire these interactions' tokens (default: all so far): webhook calls get 404 Unknown Webhook
        (10015), callbacks 404 Unknown interaction (10062)."""
        for ix in interactions or tuple(self.interactions.values()):
            ix.expired = True

    def fail(self, route_regex: str, status: int, body: dict | None = None, *, times: int = 1,
             retry_after: float | None = None, method: str | None = None) -> Fault:
        """The next `times` requests whose path (without /api/v10) matches `route_regex` get `status`.
        429 comes with Retry-After, Via and JSON retry_after (default 0.05 s); 404 with the body Discord
        sends for that route (Unknown interaction / Message / Webhook). Returns the rule (see `.hits`)."""
        return self.faults.add(route_regex, status, body, times=times, retry_after=retry_after, method=method)

    def rate_limit(self, route_regex: str, limit: int, per_s: float, *, method: str | None = None) -> RateLimit:
        """Discord-style bucket: at most `limit` requests per `per_s` s per bucket key (the regex's `(?P<key>…)`
        group, else the whole match, e.g. r"^/webhooks/\\d+/[^/]+" = per interaction token). Answers carry
        X-RateLimit-* headers (discord.py waits pre-emptively when Remaining is 0); a request over budget gets
        429. Returns the rule (`.limited` counts 429s, `.requests` the requests let through)."""
        return self.ratelimits.add(route_regex, limit, per_s, method=method)

    def clear_faults(self) -> None:
        """Drop every injected failure rule that has not fired yet (Discord is healthy again)."""
        self.faults.rules.clear()

    async def reconnect(self) -> None:
        """Ask connected clients to reconnect (op 7); discord.py resumes the session."""
        for s in list(self.sessions):
            await s.send(7, None)
            await s.ws.close(code=4000)

    def requests_to(self, regex: str, method: str | None = None) -> list[RecordedRequest]:
        pat = re.compile(regex)
        return [r for r in self.requests if pat.search(r.path) and (method is None or r.method == method.upper())]

