"""One interaction the fake dispatched, with helpers to wait for the bot's answers."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .records import FakeMessage, FakeResponse, FakeUser

if TYPE_CHECKING:
    from .server import FakeDiscord

log = logging.getLogger(__name__)

SLASH, COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 2, 3, 4, 5


@dataclass(eq=False)
class FakeInteraction:
    id: int
    token: str
    type: int
    user: FakeUser
    channel_id: int
    guild_id: int | None
    data: dict
    created_at: float                     # fake clock
    fake: "FakeDiscord" = field(repr=False)
    source_message_id: int | None = None  # the message a button/select was on
    response: FakeResponse | None = None
    original_message_id: int | None = None
    message_ids: list[int] = field(default_factory=list)  # original + followups, in order
    expired: bool = False

    # 1. what the bot answered
    @property
    def messages(self) -> list[FakeMessage]:
        """The original response (if a message) and the followups, in creation order."""
        return [self.fake.message(i) for i in self.message_ids]

    @property
    def original(self) -> FakeMessage | None:
        return self.fake.message(self.original_message_id) if self.original_message_id else None

    @property
    def followups(self) -> list[FakeMessage]:
        return [m for m in self.messages if m.kind == "followup"]

    # 2. waiting
    async def wait_response(self, timeout: float = 5.0) -> FakeResponse:
        """The initial response (callback): deferred, message, update or modal."""
        return await self.fake.wait_until(lambda: self.response, timeout,
                                          f"a response to interaction {self.id} ({self.describe()})")

    async def wait_message(self, predicate: Callable[[FakeMessage], object] = lambda m: True,
                           timeout: float = 10.0, *, anywhere: bool = False) -> FakeMessage:
        """The first message of this interaction (original or followup; with `anywhere=True` also any
        message in its channel created after it) for which `predicate` holds, checked after every change."""
        def find() -> FakeMessage | None:
            pool = self.messages
            if anywhere:
                pool = pool + [m for m in self.fake.channel_messages(self.channel_id)
                               if m.created_at >= self.created_at and m.id not in self.message_ids]
            return next((m for m in pool if not m.deleted and predicate(m)), None)

        return await self.fake.wait_until(find, timeout, f"a message of interaction {self.id} "
                                                         f"({self.describe()}) matching the predicate")

    def describe(self) -> str:
        kind = {SLASH: "slash", COMPONENT: "component", AUTOCOMPLETE: "autocomplete", MODAL_SUBMIT: "modal submit"}.get(self.type, str(self.type))
        what = self.data.get("name") or self.data.get("custom_id")
        return f"{kind} {what!r} by {self.user.name}"
