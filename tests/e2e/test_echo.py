"""Prompts are shown as typed wherever the bot echoes them: the status line, the result embed and /history. A
prompt full of Discord markdown (bold, code, spoilers, masked links, a `](` that would take over the /history
jump link, mentions of a user, a role and @everyone, a timestamp, a header) renders literally, adds no link or
mention, and pings nobody. Rendering follows Discord's markdown rules as tests/fakediscord/markdown.py models
them (its own tests show that the unescaped prompt would be formatted, linked and mention people).
"""
from __future__ import annotations

import logging

from tests.e2e.reliability_kit import *  # noqa: F401,F403 (fixtures and helpers)
from tests.e2e.reliability_kit import delivered, eventually, has_result, imagine
from tests.fakediscord.markdown import pings, render

log = logging.getLogger(__name__)


def hostile_prompt(user_id: int, role_id: int) -> str:
    return (f"**bold** `tick` ||spoiler|| ~~gone~~ _lean_ [click](https://evil.example/a) x](https://evil.example/b)"
            f" [y @everyone @here <@{user_id}> <@&{role_id}> <t:0:R> https://evil.example/c # not a header \\o/")


def as_typed(visible: str, prompt: str) -> bool:
    """`visible` (zero-width spaces dropped) is the prompt, or its beginning cut with "…"."""
    visible = visible.replace("\u200b", "")
    return visible == prompt or (visible.endswith("…") and len(visible) > 40 and prompt.startswith(visible[:-1]))


def versions(message):
    """Every version of a message Discord showed (its edits, oldest first, then the current one)."""
    return [*message.history, message.state]


async def test_a_markdown_prompt_renders_literally_everywhere_and_pings_nobody(fake_discord, start_bot,
                                                                              make_rel_bot):
    fake = fake_discord
    bot = await start_bot(await make_rel_bot())
    await bot.engines.wait_loaded()
    alice, mallory = fake.add_user("alice"), fake.add_user("mallory")
    mods = fake.add_role("mods")
    prompt = hostile_prompt(mallory.id, mods.id)
    ix = await imagine(fake, alice, prompt=prompt, seed=1)
    result = await ix.wait_message(has_result, 30)
    status = ix.original
    # 1. The status line, in every version it had (queued, step i/N, done): the prompt in bold, nothing else.
    assert status is not None and status is not result
    shown_lines = [state for state in versions(status) if state.content]  # the first is the deferred "thinking…"
    assert len(shown_lines) >= 2
    for state in shown_lines:
        shown = render(state.content)
        assert [s.kind for s in shown.spans] == ["strong"], (state.content, shown.spans)
        assert as_typed(shown.spans[0].text, prompt), shown.spans[0].text
        assert not pings(state.content, state.allowed_mentions), state.content
    # 2. The result: the embed shows the prompt as typed; the message pings its requester only.
    description = render(result.embeds[0]["description"])
    assert description.spans == [] and description.visible == prompt  # the whole prompt fits an embed
    assert pings(result.content, result.state.allowed_mentions).users <= {alice.id}
    assert not pings(result.content, result.state.allowed_mentions).roles
    # 3. /history: the prompt as typed; the only link is the jump link, to the result message.
    await eventually(lambda: delivered(bot, 1), 10, "the delivery to be recorded")
    page = await (await fake.slash(alice, "history")).wait_message(lambda m: m.ephemeral and m.embeds)
    history = render(page.embeds[0]["description"])
    jump = f"https://discord.com/channels/{fake.guild_id}/{result.channel_id}/{result.id}"
    assert [(s.text, s.target) for s in history.links] == [("jump to it", jump)], page.embeds[0]["description"]
    # the mention of alice heading the page and the job's own time; not the prompt's <@…>, <@&…> or <t:0:R>
    assert [(s.kind, s.target != "0") for s in history.mentions] == [("user", True), ("timestamp", True)]
    assert history.mentions[0].target == str(alice.id)
    line = history.visible.split("\n")[-1]  # the prompt's line under the job's line
    assert as_typed(line, prompt), line
    # 4. No message of the bot pinged anyone but alice.
    for message in fake.messages:
        for state in versions(message):
            got = pings(state.content, state.allowed_mentions)
            assert got.users <= {alice.id} and not got.roles and not got.everyone, (message, state.content)
