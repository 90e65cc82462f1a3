"""The REST half of the fake: aiohttp handlers for the routes discord.py calls."""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import payloads
from .faults import (ALREADY_ACKNOWLEDGED, UNKNOWN_CHANNEL, UNKNOWN_INTERACTION, UNKNOWN_MESSAGE,
                     UNKNOWN_WEBHOOK)
from .interaction import FakeInteraction
from .records import EPHEMERAL, LOADING, FakeAttachment, FakeMessage, FakeResponse, MessageState, RecordedRequest
from .validation import INVALID_FORM_BODY, FormError, check_message, check_modal

if TYPE_CHECKING:
    from .server import FakeDiscord

log = logging.getLogger(__name__)

API_PREFIX = r"/api/v{version:\d+}"


@dataclass(frozen=True)
class UploadedFile:
    index: int
    filename: str
    data: bytes
    content_type: str | None


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Content-Type exactly `application/json` (discord.py compares it literally; no charset)."""
    return web.Response(body=json.dumps(data).encode(), status=status,
                        headers={"Content-Type": "application/json", **(headers or {})})


class RestApi:
    def __init__(self, fake: "FakeDiscord") -> None:
        self.fake = fake

    # 1. wiring
    def add_routes(self, app: web.Application) -> None:
        p = API_PREFIX
        r = app.router
        r.add_get(p + "/users/@me", self.get_me)
        r.add_get(p + "/oauth2/applications/@me", self.get_application)
        r.add_get(p + "/applications/@me", self.get_application)
        r.add_get(p + "/gateway", self.get_gateway)
        r.add_get(p + "/gateway/bot", self.get_gateway)
        r.add_put(p + "/applications/{app}/commands", self.put_commands)
        r.add_get(p + "/applications/{app}/commands", self.get_commands)
        r.add_put(p + "/applications/{app}/guilds/{guild}/commands", self.put_commands)
        r.add_get(p + "/applications/{app}/guilds/{guild}/commands", self.get_commands)
        r.add_post(p + "/interactions/{ix}/{token}/callback", self.interaction_callback)
        r.add_post(p + "/webhooks/{app}/{token}", self.webhook_execute)
        r.add_route("*", p + "/webhooks/{app}/{token}/messages/{mid}", self.webhook_message)
        r.add_route("*", p + "/channels/{channel}/messages", self.channel_messages)
        r.add_route("*", p + "/channels/{channel}/messages/{mid}", self.channel_message)
        r.add_post(p + "/channels/{channel}/typing", self.typing)
        r.add_get(p + "/channels/{channel}", self.get_channel)
        r.add_post(p + "/users/@me/channels", self.create_dm)
        r.add_get(p + "/users/{user}", self.get_user)
        r.add_get(p + "/guilds/{guild}/members/{user}", self.get_member)
        r.add_get("/attachments/{channel}/{aid}/{filename}", self.cdn)
        r.add_route("*", "/{tail:.*}", self.unknown)

    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:
        """Record every request, apply injected faults and latency, turn ApiError into Discord's JSON."""
        fake = self.fake
        path = _api_path(request.path)
        fault = fake.faults.take(request.method, path)
        if fake.latency_s:
            await asyncio.sleep(fake.latency_s)
        if fault is not None:
            status, body, headers = fault.response(path)
            log.info("fakediscord: injected %s for %s %s", status, request.method, path)
            fake.requests.append(RecordedRequest(request.method, path, request.query_string, fake.clock(), status, True))
            return json_response(body, status, headers)
        limited = fake.ratelimits.take(request.method, path, fake.clock())
        if limited is not None and not limited[1]:
            rule, _, headers, retry_after = limited
            log.info("fakediscord: rate limit %s hit by %s %s (retry after %.3f s)", rule.name, request.method, path,
                     retry_after)
            fake.requests.append(RecordedRequest(request.method, path, request.query_string, fake.clock(), 429))
            return json_response({"message": "You are being rate limited.", "retry_after": retry_after,
                                  "global": False},
                                 429, {**headers, "Retry-After": f"{retry_after:.3f}", "Via": "1.1 google",
                                       "X-RateLimit-Scope": "user"})
        try:
            response = await handler(request)
        except ApiError as e:
            response = json_response({"message": e.message, "code": e.code}, e.status)
        except FormError as e:
            log.error("fakediscord: %s %s refused (400 Invalid Form Body): %s", request.method, path, e)
            response = json_response({"message": "Invalid Form Body", "code": INVALID_FORM_BODY,
                                      "errors": {"_errors": [{"code": "BASE_TYPE_INVALID", "message": str(e)}]}}, 400)
        if limited is not None:
            response.headers.update(limited[2])
        fake.requests.append(RecordedRequest(request.method, path, request.query_string, fake.clock(), response.status))
        await fake.notify()
        return response

    # 2. identity and commands
    def _auth(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bot {self.fake.token}":
            raise ApiError(401, "401: Unauthorized")

    async def get_me(self, request: web.Request) -> web.Response:
        self._auth(request)
        return json_response({**payloads.user(self.fake.bot_user), "verified": True, "mfa_enabled": False})

    async def get_application(self, request: web.Request) -> web.Response:
        self._auth(request)
        return json_response(payloads.application(self.fake))

    async def get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self.fake.gateway_url, "shards": 1, "session_start_limit": {
            "total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}})

    async def put_commands(self, request: web.Request) -> web.Response:
        self._auth(request)
        guild = request.match_info.get("guild")
        stored = self.fake.store_commands(int(guild) if guild else None, await request.json())
        return json_response(stored)

    async def get_commands(self, request: web.Request) -> web.Response:
        self._auth(request)
        guild = request.match_info.get("guild")
        return json_response(list(self.fake.commands_for(int(guild) if guild else None).values()))

    # 3. interactions
    async def interaction_callback(self, request: web.Request) -> web.StreamResponse:
        fake = self.fake
        # 1. the interaction must exist, be unanswered and be answered within the deadline
        ix = fake.interactions.get(int(request.match_info["ix"]))
        if ix is None or ix.token != request.match_info["token"] or ix.expired:
            raise ApiError(404, "Unknown interaction", UNKNOWN_INTERACTION)
        latency = fake.clock() - ix.created_at
        if fake.response_deadline_s is not None and latency > fake.response_deadline_s:
            log.error("fakediscord: interaction %s (%s) answered after %.2f s > %.1f s: Discord drops it",
                      ix.id, ix.describe(), latency, fake.response_deadline_s)
            raise ApiError(404, "Unknown interaction", UNKNOWN_INTERACTION)
        if ix.response is not None:
            raise ApiError(400, "Interaction has already been acknowledged.", ALREADY_ACKNOWLEDGED)
        body, files = await read_body(request)
        rtype, data = int(body["type"]), body.get("data") or {}
        # 2. act on the response type
        message: FakeMessage | None = None
        if rtype == 4:
            check_message(data, len(files))
            message = fake.create_message(ix.channel_id, "response", self._state(data, files, ix.channel_id), ix=ix)
        elif rtype == 5:
            state = MessageState(flags=LOADING | (int(data.get("flags") or 0) & EPHEMERAL), at=fake.clock())
            message = fake.create_message(ix.channel_id, "response", state, ix=ix)
        elif rtype == 7:
            check_message(data, len(files))
            message = self._edit(self._source(ix), data, files)
        elif rtype == 9:
            check_modal(data)
        elif rtype not in (1, 6, 8):
            raise ApiError(400, f"fakediscord: unknown interaction response type {rtype}")
        ix.response = FakeResponse(rtype, data, latency)
        log.debug("fakediscord: interaction %s answered with type %s after %.3f s", ix.id, rtype, latency)
        # 3. the callback response discord.py asks for with ?with_response=1
        if request.query.get("with_response") not in ("1", "true", "True"):
            return web.Response(status=204)
        callback: dict[str, Any] = {"interaction": {"id": str(ix.id), "type": ix.type,
                                                    "response_message_loading": rtype == 5,
                                                    "response_message_ephemeral": bool(message and message.ephemeral)},
                                    "resource": {"type": rtype}}
        if message is not None:
            callback["interaction"]["response_message_id"] = str(message.id)
            callback["resource"]["message"] = payloads.message(message, fake)
        return json_response(callback)

    def _interaction_for_webhook(self, request: web.Request) -> FakeInteraction:
        fake = self.fake
        ix = fake.interaction_by_token(request.match_info["token"])
        if str(request.match_info["app"]) != str(fake.application_id) or ix is None:
            raise ApiError(404, "Unknown Webhook", UNKNOWN_WEBHOOK)
        if ix.expired or fake.clock() - ix.created_at > fake.token_ttl_s:
            log.warning("fakediscord: webhook call with the expired token of interaction %s (%s)", ix.id, ix.describe())
            raise ApiError(404, "Unknown Webhook", UNKNOWN_WEBHOOK)
        return ix

    def _source(self, ix: FakeInteraction) -> FakeMessage:
        msg = self.fake.messages_by_id.get(ix.source_message_id or 0)
        if msg is None or msg.deleted:
            raise ApiError(404, "Unknown Message", UNKNOWN_MESSAGE)
        return msg

    async def webhook_execute(self, request: web.Request) -> web.StreamResponse:
        fake = self.fake
        ix = self._interaction_for_webhook(request)
        if ix.response is None:
            raise ApiError(404, "Unknown Webhook", UNKNOWN_WEBHOOK)  # Discord: no followup before the response
        body, files = await read_body(request)
        check_message(body, len(files))
        original = ix.original
        if ix.response.type == 5 and original is not None and original.loading and not original.deleted:
            # Discord: the first followup after a deferred response replaces the "thinking…" message
            message = self._edit(original, body, files)
        else:
            flags = int(body.get("flags") or 0)
            message = fake.create_message(ix.channel_id, "followup",
                                          self._state(body, files, ix.channel_id, flags=flags), ix=ix)
        wait = request.query.get("wait", "false").lower() in ("1", "true")
        return json_response(payloads.message(message, fake)) if wait else web.Response(status=204)

    async def webhook_message(self, request: web.Request) -> web.StreamResponse:
        ix = self._interaction_for_webhook(request)
        mid = request.match_info["mid"]
        # 1. resolve the message: @original is the response message, or the clicked message for types 6/7
        if mid == "@original":
            if ix.response is None:
                raise ApiError(404, "Unknown Webhook", UNKNOWN_WEBHOOK)
            msg_id = ix.original_message_id or (ix.source_message_id if ix.response.type in (6, 7) else None)
        else:
            msg_id = int(mid) if mid.isdigit() else None
            if msg_id not in ix.message_ids and msg_id != ix.source_message_id:
                msg_id = None
        msg = self.fake.messages_by_id.get(msg_id or 0)
        if msg is None or msg.deleted:
            raise ApiError(404, "Unknown Message", UNKNOWN_MESSAGE)
        # 2. act
        return await self._message_method(request, msg)

    # 4. channel messages
    def _channel(self, request: web.Request):
        ch = self.fake.channels.get(int(request.match_info["channel"]))
        if ch is None:
            raise ApiError(404, "Unknown Channel", UNKNOWN_CHANNEL)
        return ch

    async def channel_messages(self, request: web.Request) -> web.Response:
        self._auth(request)
        ch = self._channel(request)
        if request.method == "GET":
            limit = int(request.query.get("limit", 50))
            msgs = [m for m in self.fake.channel_messages(ch.id) if not m.ephemeral and not m.deleted]
            return json_response([payloads.message(m, self.fake) for m in reversed(msgs)][:limit])
        if request.method != "POST":
            return await self.unknown(request)
        body, files = await read_body(request)
        check_message(body, len(files))
        ref = (body.get("message_reference") or {}).get("message_id")
        message = self.fake.create_message(ch.id, "channel", self._state(body, files, ch.id,
                                                                         flags=int(body.get("flags") or 0) & ~EPHEMERAL),
                                           reference_id=int(ref) if ref else None)
        return json_response(payloads.message(message, self.fake))

    async def channel_message(self, request: web.Request) -> web.StreamResponse:
        self._auth(request)
        ch = self._channel(request)
        msg = self.fake.messages_by_id.get(int(request.match_info["mid"]))
        if msg is None or msg.deleted or msg.channel_id != ch.id or msg.ephemeral:
            raise ApiError(404, "Unknown Message", UNKNOWN_MESSAGE)
        return await self._message_method(request, msg)

    async def _message_method(self, request: web.Request, msg: FakeMessage) -> web.StreamResponse:
        if request.method == "GET":
            return json_response(payloads.message(msg, self.fake))
        if request.method == "DELETE":
            await self.fake.delete_message(msg, by_bot=True)
            return web.Response(status=204)
        if request.method == "PATCH":
            body, files = await read_body(request)
            check_message({**body, "content": body.get("content") or ""}, len(files))
            return json_response(payloads.message(self._edit(msg, body, files), self.fake))
        return await self.unknown(request)

    # 5. building message states
    def _state(self, body: dict, files: list[UploadedFile], channel_id: int, *, flags: int | None = None) -> MessageState:
        return MessageState(content=body.get("content") or "", embeds=body.get("embeds") or [],
                            components=body.get("components") or [],
                            attachments=self._attachments(body.get("attachments"), files, channel_id, []),
                            flags=int(body.get("flags") or 0) if flags is None else flags, at=self.fake.clock(),
                            allowed_mentions=body.get("allowed_mentions"))

    def _edit(self, msg: FakeMessage, body: dict, files: list[UploadedFile]) -> FakeMessage:
        old = msg.snapshot()
        new = MessageState(
            content=(body.get("content") or "") if "content" in body else old.content,
            embeds=(body.get("embeds") or []) if "embeds" in body else old.embeds,
            components=(body.get("components") or []) if "components" in body else old.components,
            attachments=self._attachments(body.get("attachments") if "attachments" in body else None,
                                          files, msg.channel_id, old.attachments),
            flags=old.flags & ~LOADING, at=self.fake.clock(), allowed_mentions=body.get("allowed_mentions"))
        msg.apply_edit(new)
        return msg

    def _attachments(self, listed: list[dict] | None, files: list[UploadedFile], channel_id: int,
                     existing: list[FakeAttachment]) -> list[FakeAttachment]:
        """Kept attachments (listed by id) plus the uploaded files; no list keeps all old ones."""
        by_index = {f.index: f for f in files}
        if listed is None:
            kept = list(existing)
            new = [(f, None) for f in files]
        else:
            old = {str(a.id): a for a in existing}
            kept = [old[str(a["id"])] for a in listed if str(a.get("id")) in old and int(a["id"]) not in by_index]
            new = [(by_index[int(a["id"])], a) for a in listed if str(a.get("id")).isdigit() and int(a["id"]) in by_index]
            named = {f.index for f, _ in new}
            new += [(f, None) for f in files if f.index not in named]
        for f, meta in new:
            if f.data and len(f.data) > self.fake.attachment_size_limit:
                raise ApiError(413, "Request entity too large", 40005)
        return kept + [self.fake.store_attachment((meta or {}).get("filename") or f.filename, f.data, f.content_type,
                                                  channel_id=channel_id, description=(meta or {}).get("description"))
                       for f, meta in new]

    # 6. the rest
    async def typing(self, request: web.Request) -> web.Response:
        self._auth(request)
        self._channel(request)
        return web.Response(status=204)

    async def get_channel(self, request: web.Request) -> web.Response:
        self._auth(request)
        return json_response(payloads.channel(self._channel(request), self.fake))

    async def create_dm(self, request: web.Request) -> web.Response:
        self._auth(request)
        body = await request.json()
        user = self.fake.users.get(int(body["recipient_id"]))
        if user is None:
            raise ApiError(400, "Unknown User", 10013)
        return json_response(payloads.channel(self.fake.dm_channel(user), self.fake))

    async def get_user(self, request: web.Request) -> web.Response:
        self._auth(request)
        user = self.fake.users.get(int(request.match_info["user"]))
        if user is None:
            raise ApiError(404, "Unknown User", 10013)
        return json_response(payloads.user(user))

    async def get_member(self, request: web.Request) -> web.Response:
        self._auth(request)
        user = self.fake.users.get(int(request.match_info["user"]))
        if user is None or not user.in_guild or int(request.match_info["guild"]) != self.fake.guild_id:
            raise ApiError(404, "Unknown Member", 10007)
        return json_response(payloads.member(user))

    async def cdn(self, request: web.Request) -> web.Response:
        att = self.fake.attachments.get(int(request.match_info["aid"]))
        if att is None:
            return web.Response(status=404, text="no such attachment")
        return web.Response(body=att.data, content_type=att.content_type or "application/octet-stream")

    async def unknown(self, request: web.Request) -> web.Response:
        path = _api_path(request.path)
        log.error("fakediscord: UNKNOWN ROUTE %s %s — the bot called something the fake does not serve; "
                  "add it to tests/fakediscord/rest.py", request.method, path)
        self.fake.unknown_routes.append(f"{request.method} {path}")
        return json_response({"message": f"fakediscord: unknown route {request.method} {path}", "code": 0}, 404)


def _api_path(path: str) -> str:
    """/api/v10/channels/1/messages → /channels/1/messages."""
    if path.startswith("/api/v"):
        rest = path[len("/api/v"):]
        return rest[rest.find("/"):] if "/" in rest else "/"
    return path


async def read_body(request: web.Request) -> tuple[dict, list[UploadedFile]]:
    """JSON body, or multipart `payload_json` plus `files[i]` parts."""
    if not request.content_type.startswith("multipart/"):
        raw = await request.read()
        return (json.loads(raw) if raw else {}), []
    body: dict = {}
    files: list[UploadedFile] = []
    reader = await request.multipart()
    async for part in reader:
        name = part.name or ""
        if name == "payload_json":
            body = json.loads(await part.text())
        elif name.startswith("files["):
            index = int(name[len("files["):-1])
            files.append(UploadedFile(index, part.filename or f"file{index}", bytes(await part.read()),
                                      part.headers.get("Content-Type")))
        else:
            log.warning("fakediscord: ignored multipart field %r", name)
    return body, files
