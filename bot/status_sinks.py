"""Where a job's status line is shown: the interaction's own reply, or a channel message of the bot.

A `StatusSink` is edited by the tracker (bot/tracker.py) through its throttled editor; it says whether it can still
be edited and returns the message id once an edit went through.
"""
from __future__ import annotations

import logging
from typing import Protocol

import discord

from bot.literal import echo_mentions

log = logging.getLogger(__name__)


class StatusSink(Protocol):
    """A message that shows one job's status."""

    def usable(self) -> bool: ...

    async def edit(self, content: str, view: discord.ui.View | None) -> int | None: ...


class InteractionStatus:
    """The interaction's own reply, edited through its token while the token lives (15 min)."""

    def __init__(self, interaction: discord.Interaction):
        self.interaction = interaction
        self.gone = False  # Discord said the token or the message no longer exists

    def usable(self) -> bool:
        return not self.gone and not self.interaction.is_expired()

    async def edit(self, content: str, view: discord.ui.View | None) -> int | None:
        if not self.usable():
            return None
        try:
            msg = await self.interaction.edit_original_response(content=content, view=view,
                                                                allowed_mentions=echo_mentions())
        except discord.NotFound as e:  # token expired early, or someone deleted the message
            self.gone = True
            log.info("status message of interaction %s is gone (%s); no more status edits", self.interaction.id,
                     e.code)
            return None
        return msg.id


class ChannelStatus:
    """A normal channel message of the bot, edited with the bot token (no time limit)."""

    def __init__(self, client: discord.Client, channel_id: int, message_id: int, *, prefix: str = ""):
        self.message = client.get_partial_messageable(channel_id).get_partial_message(message_id)
        self.prefix = prefix  # a line kept above the status (e.g. why this message exists)

    def usable(self) -> bool:
        return True

    async def edit(self, content: str, view: discord.ui.View | None) -> int | None:
        await self.message.edit(content=self.prefix + content, view=view, allowed_mentions=echo_mentions())
        return self.message.id
