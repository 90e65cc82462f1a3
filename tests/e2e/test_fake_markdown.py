"""The fake's model of Discord's markdown and pings (tests/fakediscord/markdown.py), checked on the cases the
echo tests rely on: if the model missed a rule, those tests would pass for the wrong reason."""
from __future__ import annotations

from tests.fakediscord.markdown import pings, render


def test_markup_is_recognised():
    r = render("**bold** __under__ *em* _em_ ~~gone~~ ||secret|| `code` [label](https://a.example/x) "
               "https://b.example <@123> <@&45> @everyone <t:0:R>")
    kinds = [s.kind for s in r.spans]
    assert kinds == ["strong", "underline", "em", "em", "strike", "spoiler", "code", "link", "url", "user", "role",
                     "everyone", "timestamp"]
    assert r.links[0].text == "label" and r.links[0].target == "https://a.example/x"
    assert r.visible.startswith("bold under em em gone secret code label https://b.example")


def test_a_prompt_holding_a_closing_bracket_takes_over_a_link_around_it():
    prompt = "a cat](https://evil.example) [b"
    r = render(f"[{prompt}](https://discord.com/channels/1/2/3)")
    assert [(s.text, s.target) for s in r.links][0] == ("a cat", "https://evil.example")


def test_line_starts_and_backslash_escapes():
    assert [s.kind for s in render("# big\n> quote\n- item\n1. first\n-# small").spans] == \
        ["heading", "quote", "list", "list", "subtext"]
    r = render("\\*\\*not bold\\*\\* \\<@123> \\[x\\](https\\://y.example) \\# no")
    assert r.spans == [] and r.visible == "**not bold** <@123> [x](https://y.example) # no"


def test_pings_follow_allowed_mentions():
    text = "<@1> <@!2> <@&3> @everyone"
    assert pings(text, None).users == {1, 2} and pings(text, None).everyone
    assert not pings(text, {"parse": []})
    only = pings(text, {"parse": [], "users": ["2"]})
    assert only.users == {2} and not only.roles and not only.everyone
