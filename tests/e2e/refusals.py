"""Reading the bot's private answers (refusals above all) in e2e tests, whichever correct shape they took.

A refusal reaches the user in one of two shapes, and both are right:

1. an ephemeral initial response (type 4, flag 64): the refusal was found before the bot deferred;
2. the bot deferred publicly first (admission took longer than `bot.job_start.SUBMIT_GRACE_S`, 0.25 s: a burst
   of commands, a slow store, or just a loaded CI machine), then deleted that public "thinking…" reply and sent
   the refusal as an ephemeral followup.

Which one a test gets can depend on the machine's load, so every refusal check goes through `refusal()`: it
accepts both, and asserts what must hold for either — the text arrived privately and nothing public remains
of the interaction.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def public_messages(ix) -> list:
    """What everybody in the channel still sees of this interaction."""
    return [m for m in ix.messages if not m.deleted and not m.ephemeral]


def private_answer(ix) -> str | None:
    """The text of the bot's ephemeral answer to `ix` in either shape, or None while there is none yet."""
    # 1. An ephemeral initial response.
    r = ix.response
    if r is not None and r.type == 4 and r.ephemeral:
        return r.data.get("content") or next((m.text() for m in ix.messages if m.ephemeral), " ")
    # 2. An ephemeral followup (after a public defer, or after an ephemeral defer).
    for m in ix.messages:
        if m.ephemeral and not m.loading:
            return m.text() or " "
    return None


async def refusal(fake, ix, timeout: float = 10.0) -> str:
    """Wait for the bot's private refusal of `ix` and return its text; assert that nothing public remains
    (in the deferred shape: the "thinking…" reply was deleted before the ephemeral followup came)."""
    text = await fake.wait_until(lambda: private_answer(ix), timeout, f"a private answer to {ix.describe()}")
    left = public_messages(ix)
    assert left == [], f"{ix.describe()}: a public message remains next to the refusal {text!r}: {left}"
    return text
