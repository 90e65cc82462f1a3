"""The gateway half of the fake: one websocket session per connected client (no compression, JSON text)."""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from . import payloads

if TYPE_CHECKING:
    from .server import FakeDiscord

log = logging.getLogger(__name__)

DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE, RESUME, RECONNECT, REQUEST_MEMBERS, INVALID_SESSION, HELLO, ACK = (
    0, 1, 2, 3, 6, 7, 8, 9, 10, 11)
HEARTBEAT_INTERVAL_MS = 41250
AUTHENTICATION_FAILED = 4004


class GatewaySession:
    """One connected client. `ready` once it identified (or resumed) and got READY."""

    def __init__(self, fake: "FakeDiscord", ws: web.WebSocketResponse) -> None:
        self.fake = fake
        self.ws = ws
        self.session_id = secrets.token_hex(16)
        self.seq = 0
        self.ready = False
        self.intents = 0
        self._send_lock = asyncio.Lock()

    async def send(self, op: int, d: Any, t: str | None = None) -> None:
        async with self._send_lock:
            frame: dict[str, Any] = {"op": op, "d": d, "s": None, "t": t}
            if op == DISPATCH:
                self.seq += 1
                frame["s"] = self.seq
            if not self.ws.closed:
                await self.ws.send_str(json.dumps(frame))

    async def dispatch(self, event: str, data: Any) -> None:
        await self.send(DISPATCH, data, event)

    async def run(self) -> None:
        """HELLO, then answer heartbeats, IDENTIFY, RESUME and member requests until the client closes."""
        await self.send(HELLO, {"heartbeat_interval": HEARTBEAT_INTERVAL_MS, "_trace": ["fakediscord"]})
        async for msg in self.ws:
            if msg.type != WSMsgType.TEXT:
                if msg.type == WSMsgType.ERROR:
                    log.warning("fakediscord gateway: websocket error %s", self.ws.exception())
                continue
            frame = json.loads(msg.data)
            op, d = frame.get("op"), frame.get("d")
            if op == HEARTBEAT:
                await self.send(ACK, None)
            elif op == IDENTIFY:
                await self._identify(d)
            elif op == RESUME:
                await self._resume(d)
            elif op == REQUEST_MEMBERS:
                await self._members(d)
            elif op == PRESENCE:
                pass
            else:
                log.warning("fakediscord gateway: ignored op %s", op)

    async def _identify(self, d: dict) -> None:
        if d.get("token") != self.fake.token:
            log.error("fakediscord gateway: IDENTIFY with a wrong token; closing with 4004")
            await self.ws.close(code=AUTHENTICATION_FAILED, message=b"Authentication failed.")
            return
        self.intents = int(d.get("intents") or 0)
        await self.dispatch("READY", payloads.ready(self.fake, self.session_id))
        self.ready = True
        await self.dispatch("GUILD_CREATE", payloads.guild_create(self.fake, self.intents))
        self.fake.identify_count += 1
        await self.fake.notify()

    async def _resume(self, d: dict) -> None:
        old = self.fake.sessions_by_id.get(d.get("session_id"))
        if d.get("token") != self.fake.token or old is None:
            await self.send(INVALID_SESSION, False)
            return
        self.session_id, self.seq = old.session_id, int(d.get("seq") or old.seq)
        self.ready = True
        await self.dispatch("RESUMED", {"_trace": ["fakediscord"]})
        self.fake.resume_count += 1
        await self.fake.notify()

    async def _members(self, d: dict) -> None:
        members = [payloads.member(u) for u in self.fake.users.values() if u.in_guild]
        await self.dispatch("GUILD_MEMBERS_CHUNK", {"guild_id": str(self.fake.guild_id), "members": members,
                                                    "chunk_index": 0, "chunk_count": 1,
                                                    "nonce": d.get("nonce"), "not_found": [], "presences": []})
