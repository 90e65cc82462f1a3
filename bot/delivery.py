"""Getting a finished job's images to the user, whatever Discord does meanwhile.

Rules (docs/bot.md, "Delivery"):
1. While the interaction token is fresh (15 min from the command, less a safety margin), the result is a
   followup of the interaction.
2. Past that, or when the followup answers 404 (unknown interaction/webhook) or 403, it is a normal channel
   message that mentions the user (bot token).
3. Discord 5xx: each way is retried a few times with backoff (discord.py already retries 429 and most 5xx
   itself; this covers 503 and the case where its retries ran out).
4. If every way fails the job stays done in the database and `/show job:<id>` posts it again. A channel that
   answers 403/404 (deleted, the bot removed from its guild, the user's DMs closed) is a refusal: the job's row
   counts it, and after `MAX_DELIVERY_REFUSALS` the bot stops trying (`db.deliveries`).
"""
from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Awaitable, Callable, TypeVar

import aiohttp
import discord

from bot.literal import echo_mentions

log = logging.getLogger(__name__)

TOKEN_LIFETIME = timedelta(minutes=15)
TOKEN_MARGIN = timedelta(seconds=30)  # a send that starts later than this may arrive after expiry
MAX_DELIVERY_REFUSALS = 3  # 403/404 answers to one job's delivery (start-ups included) before the bot gives up
T = TypeVar("T")


@dataclass(frozen=True)
class Payload:
    """One message: text, embed, PNGs (name, bytes) and the view. Files are rebuilt for each attempt."""
    content: str
    embed: discord.Embed | None
    files: list[tuple[str, bytes]]
    view: discord.ui.View | None
    mention_user_id: int | None = None

    def discord_files(self) -> list[discord.File]:
        return [discord.File(io.BytesIO(data), filename=name) for name, data in self.files]

    def allowed_mentions(self) -> discord.AllowedMentions:
        return echo_mentions(self.mention_user_id)  # the embed echoes the prompt: only the requester is pinged


@dataclass(frozen=True)
class Delivered:
    channel_id: int
    message_id: int
    via: str  # "followup" or "channel"


@dataclass(frozen=True)
class Undelivered:
    """No way worked. `refused`: Discord said no for good (403/404), so trying again later will not help."""
    reason: str
    refused: bool


@dataclass(frozen=True)
class Target:
    """Where a job's result may go: the interaction (if any) and the channel it came from."""
    application_id: int | None
    token: str | None  # the interaction token (never logged)
    token_created_at: datetime | None
    channel_id: int | None
    user_id: int

    def token_fresh(self, now: datetime | None = None) -> bool:
        if not (self.application_id and self.token and self.token_created_at):
            return False
        now = now or datetime.now(timezone.utc)
        return now < self.token_created_at + TOKEN_LIFETIME - TOKEN_MARGIN


def is_retryable(err: BaseException) -> bool:
    """Discord had a server-side problem or the connection broke: the same request may work later."""
    return isinstance(err, (discord.DiscordServerError, aiohttp.ClientConnectionError, asyncio.TimeoutError))


async def with_retries(op: Callable[[], Awaitable[T]], *, attempts: int, backoff_s: float, what: str) -> T:
    """Run `op`, retrying retryable errors `attempts - 1` times with exponential backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return await op()
        except Exception as e:
            if not is_retryable(e) or attempt == attempts:
                raise
            delay = backoff_s * 2 ** (attempt - 1)
            log.warning("%s failed (%s), attempt %d/%d, retrying in %.1f s", what, type(e).__name__, attempt,
                        attempts, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


class Deliverer:
    """Sends result messages by the rules above. One per bot."""

    def __init__(self, client: discord.Client, *, attempts: int = 3, backoff_s: float = 2.0):
        self.client = client
        self.attempts = attempts
        self.backoff_s = backoff_s

    async def deliver(self, target: Target, make: Callable[[], Payload], *,
                      job_id: int) -> Delivered | Undelivered:
        """Post the payload; `Undelivered` when no way worked (the job stays done; /show finds it)."""
        # 1. The interaction's followup, while its token is fresh.
        if target.token_fresh():
            try:
                return await with_retries(lambda: self._followup(target, make()), attempts=self.attempts,
                                          backoff_s=self.backoff_s, what=f"job {job_id}: followup")
            except (discord.NotFound, discord.Forbidden) as e:
                log.info("job %d: followup refused (%s %s); posting in the channel", job_id, e.status, e.code)
            except Exception as e:
                log.warning("job %d: followup failed (%s); posting in the channel", job_id, _describe(e))
        # 2. A normal channel message that mentions the user.
        if target.channel_id is None:
            log.error("job %d: no channel to deliver to; the result stays available through /show", job_id)
            return Undelivered("no channel to post in", refused=True)
        try:
            return await with_retries(lambda: self._channel(target, make()), attempts=self.attempts,
                                      backoff_s=self.backoff_s, what=f"job {job_id}: channel message")
        except Exception as e:
            # 3. Nothing worked: the job stays done in the database.
            log.error("job %d: could not deliver (%s); the result stays available through /show job:%d",
                      job_id, _describe(e), job_id)
            return Undelivered(_describe(e), refused=is_refusal(e))

    async def _followup(self, target: Target, p: Payload) -> Delivered:
        hook = discord.Webhook.partial(target.application_id, target.token, client=self.client)
        kwargs = dict(content=p.content, files=p.discord_files(), allowed_mentions=p.allowed_mentions(), wait=True)
        if p.embed is not None:
            kwargs["embed"] = p.embed
        if p.view is not None:
            kwargs["view"] = p.view
        msg = await hook.send(**kwargs)
        return Delivered(channel_id=msg.channel.id if msg.channel else target.channel_id, message_id=msg.id,
                         via="followup")

    async def _channel(self, target: Target, p: Payload) -> Delivered:
        channel = self.client.get_partial_messageable(target.channel_id)
        content = p.content if f"<@{target.user_id}>" in p.content else f"<@{target.user_id}> {p.content}".strip()
        kwargs = dict(content=content, files=p.discord_files(), allowed_mentions=p.allowed_mentions())
        if p.embed is not None:
            kwargs["embed"] = p.embed
        if p.view is not None:
            kwargs["view"] = p.view
        msg = await channel.send(**kwargs)
        return Delivered(channel_id=target.channel_id, message_id=msg.id, via="channel")


def is_refusal(err: BaseException) -> bool:
    """Discord will keep saying no: the channel is gone (404), or the bot may not post there any more (403: removed
    from the guild, permissions taken away, the user's DMs closed)."""
    return isinstance(err, (discord.NotFound, discord.Forbidden))


def _describe(err: Exception) -> str:
    if isinstance(err, discord.HTTPException):
        return f"HTTP {err.status} {err.text[:200]}"
    return f"{type(err).__name__}: {err}"[:300]
