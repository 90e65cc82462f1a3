"""How Discord's client renders message content and embed text, reduced to what a test needs to check that user
text is shown as typed: the visible text, the formatting spans, the links (with their label and target) and the
mentions. And which mentions of a message really ping, from its content and `allowed_mentions`.

The rules follow Discord's markdown (simple-markdown with Discord's rules): a backslash before any ASCII
punctuation shows that character; then, at each position, the first rule that matches wins:
code block, inline code, masked link `[label](url)`, autolink `<https://…>`, bare URL, mentions (`<@id>`,
`<@!id>`, `<@&id>`, `<#id>`, `</name:id>`, `<t:…>`, custom emoji `<:name:id>`, `@everyone`, `@here`), strong
`**`, underline `__`, emphasis `*`/`_`, strikethrough `~~`, spoiler `||`; at the start of a line: headers
(`#`, `##`, `###`), subtext (`-#`), block quotes (`>`, `>>>`) and lists (`-`, `*`, `1.`). A zero-width space is
visible as nothing: `Rendered.visible` leaves it out.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

ZWSP = "\u200b"

_ESCAPE = re.compile(r"\\([^0-9A-Za-z\s])")
_CODE_BLOCK = re.compile(r"```(?:[\w+-]*\n)?([\s\S]+?)```")
_INLINE_CODE = re.compile(r"(`+)([\s\S]*?[^`])\1(?!`)")
_LINK = re.compile(r"\[((?:\[[^\]]*\]|[^\[\]]|\](?=[^\[]*\]))*)\]\(\s*<?((?:\([^)]*\)|[^\s\\]|\\.)*?)>?"
                   r"(?:\s+['\"]([\s\S]*?)['\"])?\s*\)")
_AUTOLINK = re.compile(r"<([^: >]+:/[^ >]+)>")
_URL = re.compile(r"(?:https?|steam)://[^\s<]+[^<.,:;\"')\]\s]")
_MENTIONS = (
    ("user", re.compile(r"<@!?(\d+)>")),
    ("role", re.compile(r"<@&(\d+)>")),
    ("channel", re.compile(r"<#(\d+)>")),
    ("command", re.compile(r"</([\w -]+):(\d+)>")),
    ("timestamp", re.compile(r"<t:(-?\d+)(?::[tTdDfFsSR])?>")),
    ("emoji", re.compile(r"<a?:(\w+):(\d+)>")),
    ("everyone", re.compile(r"@(everyone|here)")),
)
_STYLES = (
    ("strong", re.compile(r"\*\*([\s\S]+?)\*\*(?!\*)")),
    ("underline", re.compile(r"__([\s\S]+?)__(?!_)")),
    ("em", re.compile(r"\*(?=\S)((?:\*\*|\\[\s\S]|\s+(?:\\[\s\S]|[^\s*\\]|\*\*)|[^\s*\\])+?)\*(?!\*)")),
    ("em", re.compile(r"\b_((?:__|\\[\s\S]|[^\\_])+?)_\b")),
    ("strike", re.compile(r"~~([\s\S]+?)~~")),
    ("spoiler", re.compile(r"\|\|([\s\S]+?)\|\|")),
)
_LINE_START = (
    ("heading", re.compile(r"(#{1,3}) +([^\n]+)")),
    ("subtext", re.compile(r"-# +([^\n]+)")),
    ("quote", re.compile(r">>> ([\s\S]*)")),
    ("quote", re.compile(r"> ([^\n]*)")),
    ("list", re.compile(r"(?:[-*]|\d+\.) +([^\n]+)")),
)


@dataclass(frozen=True)
class Span:
    """A piece of rendered markup: its kind (strong, link, user, …), its visible text and, for a link, the URL."""
    kind: str
    text: str
    target: str = ""


@dataclass
class Rendered:
    text: str = ""  # every visible character, markup removed (a mention shows as its raw form)
    spans: list[Span] = field(default_factory=list)

    @property
    def visible(self) -> str:
        return self.text.replace(ZWSP, "")

    @property
    def links(self) -> list[Span]:
        return [s for s in self.spans if s.kind in ("link", "url")]

    @property
    def mentions(self) -> list[Span]:
        kinds = {k for k, _ in _MENTIONS}
        return [s for s in self.spans if s.kind in kinds]


def render(markdown: str) -> Rendered:
    """What Discord shows for `markdown` (message content, an embed description or field value)."""
    out = Rendered()
    _render(markdown, out, line_start=True)
    return out


def _render(src: str, out: Rendered, *, line_start: bool) -> None:
    i = 0
    while i < len(src):
        at_line_start = (i == 0 and line_start) or (i > 0 and src[i - 1] == "\n")
        m = _ESCAPE.match(src, i)
        if m:
            out.text += m.group(1)
            i = m.end()
            continue
        if at_line_start and (span := _match_line_start(src, i, out)):
            i = span
            continue
        for kind, rx, inner in (("code", _CODE_BLOCK, 1), ("code", _INLINE_CODE, 2)):
            m = rx.match(src, i)
            if m:
                out.spans.append(Span(kind, m.group(inner)))
                out.text += m.group(inner)
                i = m.end()
                break
        else:
            end = _match_inline(src, i, out)
            if end is None:
                out.text += src[i]
                i += 1
            else:
                i = end


def _match_line_start(src: str, i: int, out: Rendered) -> int | None:
    for kind, rx in _LINE_START:
        m = rx.match(src, i)
        if m:
            inner = m.group(m.lastindex)
            label = _sub(inner)
            out.spans.append(Span(kind, label.text))
            out.spans.extend(label.spans)
            out.text += label.text
            return m.end()
    return None


def _match_inline(src: str, i: int, out: Rendered) -> int | None:
    # 1. Links: a masked link, <url>, a bare URL.
    m = _LINK.match(src, i)
    if m:
        label = _sub(m.group(1))
        out.spans.append(Span("link", label.text, m.group(2)))
        out.spans.extend(label.spans)
        out.text += label.text
        return m.end()
    for rx in (_AUTOLINK, _URL):
        m = rx.match(src, i)
        if m:
            url = m.group(m.lastindex or 0)
            out.spans.append(Span("url", url, url))
            out.text += url
            return m.end()
    # 2. Mentions.
    for kind, rx in _MENTIONS:
        m = rx.match(src, i)
        if m:
            out.spans.append(Span(kind, m.group(0), m.group(1)))
            out.text += m.group(0)
            return m.end()
    # 3. Formatting.
    for kind, rx in _STYLES:
        m = rx.match(src, i)
        if m and (kind != "em" or not src.startswith("**", i)):
            inner = _sub(m.group(1))
            out.spans.append(Span(kind, inner.text))
            out.spans.extend(inner.spans)
            out.text += inner.text
            return m.end()
    return None


def _sub(src: str) -> Rendered:
    inner = Rendered()
    _render(src, inner, line_start=False)
    return inner


# --------------------------------------------------------------------------------------------- pings

_PING_USER = re.compile(r"<@!?(\d+)>")
_PING_ROLE = re.compile(r"<@&(\d+)>")
_PING_EVERYONE = re.compile(r"@(?:everyone|here)")


@dataclass(frozen=True)
class Pings:
    """Who a message notifies: Discord parses the raw content (not embeds) and keeps what `allowed_mentions`
    allows (no `allowed_mentions` at all: everything)."""
    users: frozenset[int] = frozenset()
    roles: frozenset[int] = frozenset()
    everyone: bool = False

    def __bool__(self) -> bool:
        return bool(self.users or self.roles or self.everyone)


def pings(content: str, allowed: dict | None) -> Pings:
    users = {int(u) for u in _PING_USER.findall(content or "")}
    roles = {int(r) for r in _PING_ROLE.findall(content or "")}
    everyone = bool(_PING_EVERYONE.search(content or ""))
    if allowed is None:
        return Pings(frozenset(users), frozenset(roles), everyone)
    parse = set(allowed.get("parse") or [])
    listed_users = {int(u) for u in allowed.get("users") or []}
    listed_roles = {int(r) for r in allowed.get("roles") or []}
    return Pings(frozenset(u for u in users if "users" in parse or u in listed_users),
                 frozenset(r for r in roles if "roles" in parse or r in listed_roles),
                 everyone and "everyone" in parse)
