"""What the fake knows and records: users, roles, channels, messages with their edit history, requests."""
from __future__ import annotations

import copy
import logging
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from .markdown import Pings

log = logging.getLogger(__name__)

EPHEMERAL = 1 << 6
LOADING = 1 << 7
BUTTON = 2
SELECT_TYPES = (3, 5, 6, 7, 8)


@dataclass
class FakeRole:
    id: int
    name: str
    permissions: int = 0
    position: int = 1


@dataclass
class FakeUser:
    id: int
    name: str
    role_ids: list[int] = field(default_factory=list)
    bot: bool = False
    in_guild: bool = True
    nick: str | None = None


@dataclass
class FakeChannel:
    id: int
    name: str
    guild_id: int | None          # None for a DM channel
    recipient_id: int | None = None  # the user of a DM channel
    type: int = 0                 # 0 guild text, 1 DM
    position: int = 0


@dataclass
class FakeAttachment:
    id: int
    filename: str
    data: bytes
    content_type: str | None = None
    description: str | None = None
    url: str = ""
    declared_size: int | None = None   # what its payload's `size` claims, when not its real length

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) read from a PNG header, None for anything else."""
        if self.data[:8] == b"\x89PNG\r\n\x1a\n" and len(self.data) >= 24:
            return struct.unpack(">II", self.data[16:24])
        return None


@dataclass(frozen=True)
class FakeComponent:
    """A button or select found anywhere in a message's component tree."""
    type: int
    custom_id: str | None
    label: str | None
    style: int | None
    disabled: bool
    url: str | None
    raw: dict


@dataclass
class MessageState:
    """One version of a message (the current one or an entry of its edit history)."""
    content: str = ""
    embeds: list[dict] = field(default_factory=list)
    components: list[dict] = field(default_factory=list)
    attachments: list[FakeAttachment] = field(default_factory=list)
    flags: int = 0
    at: float = 0.0
    allowed_mentions: dict | None = None  # as sent; None = not given (Discord then parses every mention)


@dataclass(eq=False)
class FakeMessage:
    """A message the bot made: channel message, interaction response or followup.

    `kind` is "channel", "response" (the interaction's original message) or "followup".
    `history` holds the earlier versions, oldest first; `edits` counts them.
    """
    id: int
    channel_id: int
    guild_id: int | None
    author_id: int
    kind: str
    state: MessageState
    created_at: float
    interaction_id: int | None = None
    webhook_id: int | None = None
    reference_id: int | None = None
    history: list[MessageState] = field(default_factory=list)
    deleted: bool = False

    # 1. the current version, read like a discord.Message
    @property
    def content(self) -> str:
        return self.state.content

    @property
    def embeds(self) -> list[dict]:
        return self.state.embeds

    @property
    def components(self) -> list[dict]:
        return self.state.components

    @property
    def attachments(self) -> list[FakeAttachment]:
        return self.state.attachments

    @property
    def flags(self) -> int:
        return self.state.flags

    @property
    def ephemeral(self) -> bool:
        return bool(self.state.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        """A deferred response still showing "Bot is thinking…"."""
        return bool(self.state.flags & LOADING)

    @property
    def edits(self) -> int:
        return len(self.history)

    # 2. components
    def walk_components(self) -> Iterator[FakeComponent]:
        yield from _walk(self.state.components)

    @property
    def buttons(self) -> list[FakeComponent]:
        return [c for c in self.walk_components() if c.type == BUTTON]

    @property
    def custom_ids(self) -> list[str]:
        return [c.custom_id for c in self.walk_components() if c.custom_id]

    def component(self, key: str) -> FakeComponent:
        """The button/select whose custom_id is `key`, else whose label is `key` (case-insensitive)."""
        found = [c for c in self.walk_components() if c.custom_id == key]
        found = found or [c for c in self.walk_components() if c.label and c.label.lower() == key.lower()]
        if not found:
            raise LookupError(f"message {self.id} has no component {key!r}; it has "
                              f"{[(c.custom_id, c.label) for c in self.walk_components()]}")
        return found[0]

    def pings(self) -> "Pings":
        """Who this version of the message notifies (content mentions that `allowed_mentions` lets through)."""
        from .markdown import pings
        return pings(self.content, self.state.allowed_mentions)

    # 3. editing (used by the server)
    def apply_edit(self, new: MessageState) -> None:
        self.history.append(self.state)
        self.state = new

    def snapshot(self) -> MessageState:
        return copy.deepcopy(self.state)

    def text(self) -> str:
        """Content plus embed titles/descriptions/fields, for asserting on what a user reads."""
        parts = [self.content]
        for e in self.embeds:
            parts += [e.get("title") or "", e.get("description") or ""]
            parts += [f"{f.get('name', '')} {f.get('value', '')}" for f in e.get("fields", [])]
            parts.append((e.get("footer") or {}).get("text", ""))
        return "\n".join(p for p in parts if p)

    def __repr__(self) -> str:
        return (f"<FakeMessage id={self.id} kind={self.kind} content={self.content[:60]!r} "
                f"embeds={len(self.embeds)} files={[a.filename for a in self.attachments]} "
                f"custom_ids={self.custom_ids} flags={self.flags} edits={self.edits}"
                f"{' deleted' if self.deleted else ''}>")


def _walk(components: list[dict]) -> Iterator[FakeComponent]:
    for c in components or []:
        ctype = c.get("type")
        if ctype == BUTTON or ctype in SELECT_TYPES:
            yield FakeComponent(type=ctype, custom_id=c.get("custom_id"), label=c.get("label"),
                                style=c.get("style"), disabled=bool(c.get("disabled", False)),
                                url=c.get("url"), raw=c)
        yield from _walk(c.get("components") or [])
        if isinstance(c.get("component"), dict):
            yield from _walk([c["component"]])
        if isinstance(c.get("accessory"), dict):
            yield from _walk([c["accessory"]])


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str          # without the /api/v10 prefix
    query: str
    at: float          # fake clock
    status: int = 0
    fault: bool = False  # answered by an injected fault


@dataclass
class FakeResponse:
    """The initial response to an interaction: type 4 message, 5 deferred, 6 deferred update,
    7 update message, 9 modal. `latency_s` is the time from dispatch to the callback."""
    type: int
    data: dict
    latency_s: float

    @property
    def deferred(self) -> bool:
        return self.type in (5, 6)

    @property
    def ephemeral(self) -> bool:
        return bool(int(self.data.get("flags") or 0) & EPHEMERAL)

    @property
    def modal_custom_id(self) -> str | None:
        return self.data.get("custom_id") if self.type == 9 else None
