"""User text shown as typed: the one helper for every place the bot echoes a prompt into Discord markdown.

A prompt is the user's text, and Discord renders messages and embeds as markdown: a prompt holding `**`, `||`,
backticks, `[text](url)` or `](` (which would take over a link around it), `<@id>`, `<@&id>`, `<t:0>`, `@everyone`,
`# ` or `> ` would be shown formatted, as a link, a mention pill or a header, or turn a URL into a preview under
the bot's message. `literal()` returns the text so that Discord shows exactly the characters typed:

- every markdown character (`\\ * _ ~ ` | > # - + [ ] <`) gets a backslash (Discord shows the character, not
  the markup), as do the `:` of `://` (no autolink, no preview) and the `.` of a numbered list (`1.`);
- `@everyone`, `@here` and `<@…` get a zero-width space after the `@`: they are not mentions even where a message
  allows mentions (each message that echoes a prompt also sets `allowed_mentions` itself);
- it is cut to a budget of characters *as sent* (escapes count), never inside an escape, with "…".

Every message that echoes a prompt is sent with `echo_mentions(requester)`: it may ping the requester (the result,
a failure notice) and nobody else, whatever the text holds.

Where the prompt sits next to a link (/history), it is never the link's text: the link has its own label.
"""
from __future__ import annotations

import logging
import re

import discord

log = logging.getLogger(__name__)

ESCAPED = frozenset("\\*_~`|>#-+[]<")  # the characters of Discord's markdown that the prompt may hold
ZWSP = "\u200b"  # zero-width space: breaks a mention without changing what is shown
ELLIPSIS = "…"
_MENTION_AFTER_AT = re.compile(r"everyone|here|[!&]?\d")
_LIST_NUMBER_DOT = re.compile(r"(?m)^\s*\d+(\.)(?=\s)")


def literal(text: str, limit: int, *, one_line: bool = True) -> str:
    """`text` escaped so that Discord shows it as typed, at most `limit` characters long as sent (an escaped
    character counts 2). `one_line` folds every run of whitespace (newlines too) into one space."""
    if one_line:
        text = " ".join(text.split())
    pieces = _escaped_pieces(text)
    # 1. Everything fits.
    if sum(len(p) for p in pieces) <= limit:
        return "".join(pieces)
    # 2. Cut between characters (never inside an escape), leaving room for the ellipsis.
    out, used = [], 0
    for piece in pieces:
        if used + len(piece) > limit - len(ELLIPSIS):
            break
        out.append(piece)
        used += len(piece)
    return "".join(out).rstrip() + ELLIPSIS


def _escaped_pieces(text: str) -> list[str]:
    """One string per character of `text`: the character itself, or it with what keeps it literal."""
    list_dots = {m.start(1) for m in _LIST_NUMBER_DOT.finditer(text)}
    pieces = []
    for i, ch in enumerate(text):
        if ch in ESCAPED or i in list_dots or (ch == ":" and text.startswith("//", i + 1)):
            pieces.append("\\" + ch)
        elif ch == "@" and _MENTION_AFTER_AT.match(text, i + 1):
            pieces.append("@" + ZWSP)
        else:
            pieces.append(ch)
    return pieces


def echo_mentions(user_id: int | None = None) -> discord.AllowedMentions:
    """The mentions a message that echoes user text may make: the requester's (when given), no other user, no role,
    no @everyone/@here, no reply ping."""
    users = [discord.Object(user_id)] if user_id else False
    return discord.AllowedMentions(everyone=False, roles=False, users=users, replied_user=False)
