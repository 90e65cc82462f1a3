"""Bad input, table-driven: every case is sent to the real bot (or, for config files, to the real config
loader) and must get a clear message while the jobs table stays exactly as it was. Legitimate but unusual
prompts (emoji, right-to-left text) must be accepted; control characters are stripped.

The table in docs/reliability.md ("Bad inputs tried") is rendered from CASES and CONFIG_CASES:

    /work/venv/bin/python -m tests.e2e.test_bad_input --write-doc     # rewrite that section
and `test_reliability_doc_lists_every_case` fails when the doc and the cases differ.
"""
from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.spec import MAX_SEED
from tests.e2e.reliability_kit import *  # noqa: F401,F403 (fixtures and helpers)
from tests.e2e.reliability_kit import crafted_click, edit_form_id, has_result, job_rows
from tests.e2e.refusals import refusal

log = logging.getLogger(__name__)

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
BEGIN, END = "<!-- bad-input table: begin -->", "<!-- bad-input table: end -->"
BANNED = ["frog"]
ACCEPTED = "accepted"


@dataclass(frozen=True)
class Case:
    """One bad (or odd) input. `via`: imagine (slash options, Discord's own checks bypassed as a crafted
    request would), click (a button custom_id), modal (the Edit modal's fields), history (/history options).
    `says`: a piece of the ephemeral answer; for accepted prompts `stored` is the prompt the job row keeps."""
    what: str
    via: str
    send: Any
    says: str = ""
    user: str = "alice"
    stored: str | None = None

    @property
    def accepted(self) -> bool:
        return self.stored is not None


P = {"size": "256x256", "steps": 1}  # the options every /imagine case starts from
CASES: list[Case] = [
    # --- option values outside their ranges, sizes not offered -----------------------------------------
    Case("steps 0", "imagine", {"prompt": "a fox", "steps": 0}, "Steps must be between 1 and 50, not 0"),
    Case("steps 51", "imagine", {"prompt": "a fox", "steps": 51}, "Steps must be between 1 and 50, not 51"),
    Case("steps -3", "imagine", {"prompt": "a fox", "steps": -3}, "Steps must be between 1 and 50"),
    Case("steps 2^70", "imagine", {"prompt": "a fox", "steps": 2 ** 70}, "Steps must be between 1 and 50"),
    Case("guidance 0.5", "imagine", {"prompt": "a fox", "guidance": 0.5}, "Guidance must be between 1 and 10"),
    Case("guidance 10.5", "imagine", {"prompt": "a fox", "guidance": 10.5}, "Guidance must be between 1 and 10"),
    # NaN and Infinity are not JSON numbers, so Discord cannot deliver them (and discord.py's orjson parser, used
    # when orjson is installed, rejects the payload): engine.limits.check_guidance refuses them for the CLI and
    # the web console (tests/engine/test_limits.py); here the largest finite double stands in.
    Case("guidance 1e308", "imagine", {"prompt": "a fox", "guidance": 1e308}, "Guidance must be between 1 and 10"),
    Case("guidance -1e308", "imagine", {"prompt": "a fox", "guidance": -1e308}, "Guidance must be between 1 and 10"),
    Case("count 0", "imagine", {"prompt": "a fox", "count": 0}, "Count must be between 1 and 4"),
    Case("count 5", "imagine", {"prompt": "a fox", "count": 5}, "Count must be between 1 and 4"),
    Case("seed -2", "imagine", {"prompt": "a fox", "seed": -2}, "Seed -2 is out of range"),
    Case("seed MAX_SEED+1", "imagine", {"prompt": "a fox", "seed": MAX_SEED + 1}, "is out of range"),
    Case("size 1024x1024 (not offered)", "imagine", {"prompt": "a fox", "size": "1024x1024"},
         "Size '1024x1024' is not offered"),
    Case("size 0x0", "imagine", {"prompt": "a fox", "size": "0x0"}, "is not offered"),
    Case("size with SQL", "imagine", {"prompt": "a fox", "size": "256x256'; DROP TABLE jobs;--"}, "is not offered"),
    Case("size empty string", "imagine", {"prompt": "a fox", "size": ""}, "is not offered"),
    # --- prompts ---------------------------------------------------------------------------------------------
    Case("empty prompt", "imagine", {"prompt": ""}, "The prompt is empty"),
    Case("whitespace prompt", "imagine", {"prompt": " \t\n  "}, "The prompt is empty"),
    Case("only control characters", "imagine", {"prompt": "\x00\x07\x1b\x7f"}, "The prompt is empty"),
    Case("only invisible characters (zero-width, ZWJ, Hangul filler, braille blank, tag, variation selector)",
         "imagine", {"prompt": "\u200b\u200d\u3164\u2800\U000e0041\ufe0f"}, "The prompt is empty"),
    Case("only Hangul fillers and spaces", "imagine", {"prompt": "\u3164 \u3164 \uffa0"}, "The prompt is empty"),
    Case("5000-char prompt", "imagine", {"prompt": "x" * 5000}, "5000 characters long; the limit is 1000"),
    Case("1001-char prompt", "imagine", {"prompt": "y" * 1001}, "1001 characters long; the limit is 1000"),
    Case("control characters inside", "imagine", {"prompt": "a cat\x00 on a\x1b mat\x07"},
         stored="a cat on a mat"),
    Case("bidi override inside", "imagine", {"prompt": "a sign \u202ereads gnorw\u202c"},
         stored="a sign reads gnorw"),
    Case("newline kept", "imagine", {"prompt": "a cat\non a mat"}, stored="a cat\non a mat"),
    Case("emoji prompt", "imagine", {"prompt": "🦊 in ❄️ snow, 👨‍👩‍👧 family"},
         stored="🦊 in ❄️ snow, 👨‍👩‍👧 family"),
    Case("flag emoji (tag sequence) and ❤️ at the end kept", "imagine",
         {"prompt": "a flag \U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f ❤️"},
         stored="a flag \U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f ❤️"),
    Case("zero-width spaces and braille blanks around a prompt", "imagine", {"prompt": "\u200b\u2800a fox\u200b"},
         stored="a fox"),
    Case("job over [limits] max_job_cost (0.2 here)", "imagine", {"prompt": "a fox", "count": 4},
         "4 image(s) × 1 steps × 0.0625 megapixels = 0.25; this bot allows at most 0.2 per job"),
    Case("Arabic (RTL) prompt", "imagine", {"prompt": "قطة على سطح القمر"}, stored="قطة على سطح القمر"),
    Case("Hebrew mixed with Latin", "imagine", {"prompt": "a sign that says שלום"},
         stored="a sign that says שלום"),
    # --- banned words in odd case and look-alikes --------------------------------------------------------------
    Case("banned: upper case", "imagine", {"prompt": "a FROG on a log"}, "does not accept ('frog')"),
    Case("banned: mixed case", "imagine", {"prompt": "a fRoG on a log"}, "does not accept ('frog')"),
    Case("banned: Cyrillic о", "imagine", {"prompt": "a fr\u043eg on a log"}, "does not accept ('frog')"),
    Case("banned: Greek ο", "imagine", {"prompt": "a fr\u03bfg on a log"}, "does not accept ('frog')"),
    Case("banned: full-width", "imagine", {"prompt": "a ｆｒｏｇ on a log"}, "does not accept ('frog')"),
    Case("banned: zero-width space inside", "imagine", {"prompt": "a fr\u200bog"}, "does not accept ('frog')"),
    Case("banned: spaced letters", "imagine", {"prompt": "a f r o g"}, "does not accept ('frog')"),
    Case("banned: digit 0 for o", "imagine", {"prompt": "a FR0G"}, "does not accept ('frog')"),
    Case("banned: accent", "imagine", {"prompt": "a fróg"}, "does not accept ('frog')"),
    Case("banned: math bold", "imagine", {"prompt": "a \U0001d41f\U0001d42b\U0001d428\U0001d420"},
         "does not accept ('frog')"),
    # --- buttons: jobs that do not exist or are someone else's, forged custom_ids ------------------------------
    Case("Delete of job 999 (no such job)", "click", "fluxbot:delete:999", "Job #999 does not exist"),
    Case("Cancel of job 999 (no such job)", "click", "fluxbot:cancel:999", "Job #999 does not exist"),
    Case("Reroll of job 999 (no such job)", "click", "fluxbot:reroll:999", "Job #999 does not exist"),
    Case("Delete of bob's job by alice", "click", "fluxbot:delete:1",
         "Only the person who asked for this job or an admin of its server may delete it"),
    Case("Cancel of bob's job by alice", "click", "fluxbot:cancel:1",
         "Only the person who asked for this job or an admin of its server may cancel it"),
    Case("Delete with a 30-digit job id", "click", "fluxbot:delete:" + "9" * 30, "does not exist"),
    Case("forged: fluxbot:delete:abc", "click", "fluxbot:delete:abc", "not recognised"),
    Case("forged: fluxbot:delete:-1", "click", "fluxbot:delete:-1", "not recognised"),
    Case("forged: fluxbot:nuke:1", "click", "fluxbot:nuke:1", "not recognised"),
    Case("forged: fluxbot:delete:1:extra", "click", "fluxbot:delete:1:extra", "not recognised"),
    Case("forged: someone else's history page", "click", "fluxbot:hist:{bob}:1:n",
         "Only admins may look at another user's history"),
    Case("/history of bob by alice (not admin)", "history", {"user": "{bob}"},
         "Only admins may look at another user's history"),
    # --- the Edit modal -------------------------------------------------------------------------------------------
    Case("Edit modal: seed 'abc'", "modal", {"prompt": "a fox", "seed": "abc", "steps": "2"},
         "Seed must be a whole number"),
    Case("Edit modal: steps 999", "modal", {"prompt": "a fox", "seed": "1", "steps": "999"},
         "Steps must be between 1 and 50, not 999"),
    Case("Edit modal: whitespace prompt", "modal", {"prompt": "   ", "seed": "1", "steps": "2"},
         "The prompt is empty"),
    Case("Edit modal: only braille blanks", "modal", {"prompt": "\u2800\u2800\u2800", "seed": "1", "steps": "2"},
         "The prompt is empty"),
    Case("Edit modal: banned word", "modal", {"prompt": "a Frog", "seed": "", "steps": ""},
         "does not accept ('frog')"),
]


@dataclass(frozen=True)
class ConfigCase:
    what: str
    toml: str
    says: str
    hides: str = ""  # a value that must not appear in the message


CONFIG_CASES: list[ConfigCase] = [
    ConfigCase("number as a string", '[limits]\nmax_prompt_chars = "1000"\n',
               "[limits] max_prompt_chars = '1000': must be a whole number"),
    ConfigCase("bool as a string", '[discord]\nallow_dms = "yes"\n', "[discord] allow_dms = 'yes': must be true or false"),
    ConfigCase("value not among the choices", '[engine]\nprofile = "turbo"\n',
               "[engine] profile = 'turbo': must be one of auto, resident, model-offload, streamed"),
    ConfigCase("number out of range", '[limits]\nmax_count = 9\n', "[limits] max_count = 9: must be at most 4"),
    ConfigCase("id list with a name", '[discord]\nowner_ids = ["alice"]\n',
               "every item must be a Discord id (a whole number), not 'alice'"),
    ConfigCase("unknown key (typo)", '[discord]\nowner_id = [1]\n', "[discord] owner_id: unknown key"),
    ConfigCase("unknown section (typo)", '[enigne]\nmodel = "x"\n', "unknown section [enigne]"),
    ConfigCase("section that is not a table", 'discord = "x"\n', "[discord] must be a table"),
    ConfigCase("token of the wrong type", '[discord]\ntoken = 123456789\n',
               "[discord] token = (hidden): must be a string", hides="123456789"),
    ConfigCase("not TOML at all", '[discord\ntoken = "x"\n', "is not valid TOML"),
    ConfigCase("size not a multiple of 16", '[discord]\nsizes = ["1:1 1000x1000"]\n',
               "width 1000 is not allowed: use a multiple of 16 from 256 to 2048"),
]


# --- running the cases -------------------------------------------------------------------------------------------

@dataclass
class World:
    fake: Any
    bot: Any
    users: dict
    bob_result: Any
    problems: list[str] = field(default_factory=list)


def _fill(value: Any, w: World) -> Any:
    """Put real user ids into a case's strings ("{bob}")."""
    if isinstance(value, str):
        return value.format(**{name: u.id for name, u in w.users.items()})
    if isinstance(value, dict):
        return {k: _fill(v, w) for k, v in value.items()}
    return value


async def send(case: Case, w: World):
    fake, user = w.fake, w.users[case.user]
    payload = _fill(case.send, w)
    if case.via == "imagine":
        return await fake.slash(user, "imagine", {**P, **payload}, validate=False)
    if case.via == "click":
        return await crafted_click(fake, user, payload)
    if case.via == "history":
        return await fake.slash(user, "history", {"user": int(payload["user"])}, validate=False)
    if case.via == "modal":
        opener = await fake.click(user, w.bob_result, "Edit")
        form = (await opener.wait_response()).modal_custom_id
        assert form and form.startswith(edit_form_id(w.bot, 1)), form
        return await fake.submit_modal(user, form, payload, message=w.bob_result)
    raise ValueError(case.via)


async def run_case(case: Case, w: World) -> None:
    before = await job_rows(w.bot.store)
    ix = await send(case, w)
    if case.accepted:
        # 1. Accepted: the job is made, its row keeps the cleaned prompt.
        await ix.wait_message(has_result, 30)
        await w.fake.wait_until(lambda: not w.bot.tracker.tracked(), 10, "the delivery to be recorded")
        after = await job_rows(w.bot.store)
        new = after[len(before):]
        prompt_col = [c.name for c in w.bot.store_columns].index("prompt")
        if len(new) != 1 or new[0][prompt_col] != case.stored:
            w.problems.append(f"{case.what}: expected one new job with prompt {case.stored!r}, got "
                              f"{[r[prompt_col] for r in new]!r}")
        return
    # 2. Refused: a private answer that says why (either shape), nothing public left, and not one changed row.
    try:
        text = await refusal(w.fake, ix, timeout=5)
    except AssertionError as e:
        w.problems.append(f"{case.what}: {e} (response: {ix.response})")
        return
    await asyncio.sleep(0.05)
    if case.says not in text:
        w.problems.append(f"{case.what}: expected {case.says!r} in the answer, got {text!r}")
    if await job_rows(w.bot.store) != before:
        w.problems.append(f"{case.what}: the jobs table changed")


async def test_bad_inputs_get_a_clear_message_and_change_no_row(fake_discord, start_bot, make_rel_bot):
    from db.models import Job

    fake = fake_discord
    bot = await start_bot(await make_rel_bot(discord={"banned_words": BANNED}, limits={"max_job_cost": 0.2}))
    await bot.engines.wait_loaded()
    bot.store_columns = list(Job.__table__.columns)
    users = {"alice": fake.add_user("alice"), "bob": fake.add_user("bob")}
    # bob's job 1, done, with its message: the target of the button cases.
    bob_result = await (await fake.slash(users["bob"], "imagine", {**P, "prompt": "bob's boat", "seed": 1})
                        ).wait_message(has_result, 30)
    await fake.wait_until(lambda: not bot.tracker.tracked(), 10, "bob's delivery to be recorded")
    w = World(fake, bot, users, bob_result)
    for case in CASES:
        await run_case(case, w)
    assert not w.problems, "\n".join(w.problems)
    assert not [m for m in fake.messages if m.deleted]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.what for c in CONFIG_CASES])
def test_bad_config_files_are_refused_with_the_key_named(case, tmp_path):
    from bot.config import ConfigError, load_config
    from bot.validation import parse_sizes

    path = tmp_path / "config.toml"
    path.write_text(case.toml)
    with pytest.raises(ConfigError) as err:
        cfg = load_config(path, env={})
        parse_sizes(cfg.discord.sizes)  # what FluxBot checks when it starts
    message = str(err.value)
    assert case.says in message, message
    if case.hides:
        assert case.hides not in message


# --- the table in docs/reliability.md ------------------------------------------------------------------------------

def _show(value: Any) -> str:
    """A short, table-safe form of a case value (long strings cut, with their length)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and len(value) > 40:
        text = f"{value[:12]!r}… ({len(value)} chars)"
    else:
        text = repr(value)
    text = text.replace("{bob}", "<bob's id>")
    return text.replace("|", "\\|").replace("`", "'")


def _sent(case: Case) -> str:
    if case.via == "imagine":
        return f"/imagine {_show(case.send)}"
    if case.via == "click":
        return f"button `{_show(case.send)[1:-1]}`"
    if case.via == "modal":
        return f"Edit modal {_show(case.send)}"
    return f"/history {_show(case.send)}"


def render_table() -> str:
    lines = ["| # | input | sent as | outcome |", "|---|---|---|---|"]
    for i, c in enumerate(CASES, 1):
        outcome = (f"accepted, stored as {_show(c.stored)}" if c.accepted
                   else f"refused: “{c.says}…”, no row changed")
        lines.append(f"| {i} | {c.what} | {_sent(c)} | {outcome} |")
    n = len(CASES)
    for i, c in enumerate(CONFIG_CASES, n + 1):
        lines.append(f"| {i} | config: {c.what} | `{_show(c.toml)[1:-1]}` | refused at start: “{c.says}…” |")
    return "\n".join(lines)


def rendered_section() -> str:
    return f"{BEGIN}\n{render_table()}\n{END}"


def test_reliability_doc_lists_every_case():
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, f"{DOC} lacks the bad-input table markers"
    current = text[text.index(BEGIN):text.index(END) + len(END)]
    assert current == rendered_section(), ("docs/reliability.md's bad-input table is out of date: run "
                                           "`python -m tests.e2e.test_bad_input --write-doc`")


def write_doc() -> None:
    text = DOC.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    DOC.write_text(text[:start] + rendered_section() + text[end:], encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-doc"]:
        write_doc()
        print(f"wrote the bad-input table ({len(CASES) + len(CONFIG_CASES)} cases) to {DOC}")
    else:
        print(render_table())
