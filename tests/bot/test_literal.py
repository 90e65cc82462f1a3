"""bot.literal: user text shown as typed in Discord markdown, within a budget of characters as sent."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.literal import echo_mentions, literal
from tests.fakediscord.markdown import render

PLAIN = "a watercolour fox, soft light, 35mm (film grain:1.2), 👩‍🚀 café"


def test_plain_text_passes_unchanged():
    assert literal(PLAIN, 500) == PLAIN


@pytest.mark.parametrize("text", ["**x** __y__ *z* _w_", "`a` ```b```", "||s|| ~~t~~", "[l](https://e.example)",
                                  "<@123456789012345678> <@&1> <#2> </c:3> <t:0:R> <:e:4> @everyone @here",
                                  "# h", "> q", ">>> q", "- li", "1. li", "-# sub", "https://e.example/x", "\\*"])
def test_markup_renders_as_typed(text):
    shown = render(literal(text, 500))
    assert shown.spans == [] and shown.visible == text


def test_multi_line_text_keeps_its_lines_and_escapes_each_line_start():
    text = "# title\n> quote\n1. one\n- two"
    sent = literal(text, 500, one_line=False)
    assert sent.count("\n") == 3
    assert render(sent).spans == [] and render(sent).visible == text
    assert literal(text, 500) == literal("# title > quote 1. one - two", 500)  # one line: whitespace folded


def test_the_budget_counts_escapes_and_never_cuts_one():
    text = "*" * 100
    sent = literal(text, 51)
    assert len(sent) <= 51 and sent.endswith("…") and sent == "\\*" * 25 + "…"
    assert render(sent).visible == "*" * 25 + "…"
    assert len(literal("word " * 1000, 4096, one_line=False)) <= 4096


def test_echo_mentions_allow_the_requester_only():
    assert echo_mentions(42).to_dict() == {"parse": [], "users": [42]}  # replied_user False: not sent at all
    assert echo_mentions().to_dict() == {"parse": []}


def test_every_prompt_put_into_a_message_goes_through_literal():
    """A guard: an f-string field naming a prompt (`{job.prompt[:80]}`) anywhere in bot/ must be `literal(...)`."""
    root = Path(__file__).resolve().parents[2] / "bot"
    offenders = [f"{path.relative_to(root.parent)}:{n}: {m.group(0)}"
                 for path in sorted(root.rglob("*.py"))
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 for m in re.finditer(r"\{([^{}]*\bprompt\b[^{}]*)\}", line) if "literal(" not in m.group(1)]
    assert offenders == []
