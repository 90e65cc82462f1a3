"""Security: the token stays secret through a whole session (logs at DEBUG, errors, user messages, reprs);
admin-only actions and generation rights are checked on the bot's side at every entry point (slash command,
button, modal); file names never come from user input.
"""
from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path

import pytest

from bot.config import ConfigError, LoggingSettings, Secret, load_config
from bot.logging_setup import setup_logging
from db import jobs as store_jobs
from tests.e2e.reliability_kit import *  # noqa: F401,F403 (fixtures and helpers)
from tests.e2e.reliability_kit import (count_rows, crafted_click, edit_form_id, has_result, imagine, job_buttons,
                                       job_rows)
from tests.e2e.refusals import private_answer, refusal

log = logging.getLogger(__name__)

# Not shaped like a Discord token on purpose: only the exact-secret mask can hide it.
TOKEN = "fluxbot-e2e-SECRET-7f3a9c2e51d84b06"


# --- the token -----------------------------------------------------------------------------------------------------

def test_config_repr_str_and_errors_never_show_the_token(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(f'[discord]\ntoken = "{TOKEN}"\n')
    cfg = load_config(path, env={})
    assert cfg.discord.token.reveal() == TOKEN
    for shown in (repr(cfg), str(cfg), repr(cfg.discord), f"{cfg.discord.token}", str(cfg.discord.token),
                  "%s" % cfg.discord.token, "{}".format(cfg.discord.token)):
        assert TOKEN not in shown, shown
    # The env override is a Secret too; a token of the wrong type is named without its value.
    assert TOKEN not in repr(load_config(path, env={"DISCORD_TOKEN": TOKEN + "-env"}))
    path.write_text('[discord]\ntoken = 735190246\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert "735190246" not in str(err.value) and "(hidden)" in str(err.value)


async def test_token_absent_from_logs_and_messages_through_a_session_with_errors(fake_discord, start_bot,
                                                                                make_rel_bot, engine_faults,
                                                                                tmp_path):
    fake = fake_discord
    fake.token = TOKEN  # the fake only accepts this token (REST Authorization and gateway IDENTIFY)
    console = io.StringIO()
    log_file = tmp_path / "logs" / "fluxbot.log"
    handles = setup_logging(LoggingSettings(file=str(log_file), level="DEBUG", discord_level="DEBUG"),
                            secrets=[TOKEN], stream=console)
    try:
        bot = await make_rel_bot(discord={"token": Secret(TOKEN)})
        await start_bot(bot)
        await bot.engines.wait_loaded()
        alice = fake.add_user("alice")
        # 1. A job that works, one the engine fails (a trace is logged), a refused one, an unknown button,
        #    and a gateway reconnect (RESUME carries the token).
        await (await imagine(fake, alice, prompt="a quiet harbour", seed=1)).wait_message(has_result, 30)
        engine_faults.fail_at_step = engine_faults.calls + 1
        failed = await imagine(fake, alice, prompt="a stormy harbour", seed=2)
        await failed.wait_message(lambda m: "Failed" in m.content, 30)
        await (await fake.slash(alice, "imagine", {"prompt": "", "size": "256x256"}, validate=False)).wait_response()
        await (await crafted_click(fake, alice, "fluxbot:nuke:1")).wait_response()
        await fake.reconnect()
        await fake.wait_until(lambda: fake.resume_count >= 1 and any(s.ready for s in fake.sessions), 10, "RESUME")
    finally:
        for h in (handles.console, handles.file):
            h.flush()
        handles.close()
    # 2. The token went over the wire (so it was really used) but into no log line, trace or message.
    assert fake.identify_count >= 1
    written = {"log file": log_file.read_text(), "console": console.getvalue(),
               "messages": "\n".join(m.text() + str(m.history) for m in fake.messages)}
    assert "generation failed" in written["log file"] and "Traceback" in written["log file"]
    assert "discord.http" in written["log file"]  # discord.py's own DEBUG lines were captured
    for where, text in written.items():
        assert TOKEN not in text, f"the token appears in the {where}"


# --- admin-only actions and generation rights, at every entry point ------------------------------------------------

async def answer(fake, ix) -> str:
    """The ephemeral answer to an interaction (either shape: see tests/e2e/refusals.py)."""
    return await fake.wait_until(lambda: private_answer(ix), 10, "an ephemeral answer")


async def test_admin_only_actions_are_checked_on_every_entry_point(fake_discord, start_bot, make_rel_bot):
    fake = fake_discord
    boss = fake.add_user("boss")               # an owner id: admin everywhere
    mods = fake.add_role("mods")
    moderator = fake.add_user("moderator", [mods])  # admin through [discord] admin_role_ids
    bot = await start_bot(await make_rel_bot(discord={"owner_ids": [boss.id], "admin_role_ids": [mods.id]}))
    await bot.engines.wait_loaded()
    alice, mallory = fake.add_user("alice"), fake.add_user("mallory")
    result = await (await imagine(fake, alice, prompt="alice's garden", seed=1)).wait_message(has_result, 30)
    for i in range(11):  # enough history for a second page
        await store_jobs.create_job(bot.store, _old_job(alice.id, i, guild_id=fake.guild_id))  # made in this guild
    before = await job_rows(bot.store)
    # 1. mallory, not an admin: every way in is refused, nothing changes.
    refusals = [
        (await fake.slash(mallory, "history", {"user": alice.id}), "Only admins"),
        (await crafted_click(fake, mallory, f"fluxbot:hist:{alice.id}:2:n"), "Only admins"),
        (await crafted_click(fake, mallory, job_buttons(bot, 1, ["delete"])[0], message=result), "may delete it"),
        (await crafted_click(fake, mallory, "fluxbot:cancel:2"), "may cancel it"),
    ]
    for ix, says in refusals:
        assert says in await refusal(fake, ix)
    await asyncio.sleep(0.1)
    assert await job_rows(bot.store) == before and not result.deleted
    # 2. The admins may: boss reads alice's history, the moderator cancels one of her jobs and deletes another.
    ix = await fake.slash(boss, "history", {"user": alice.id})
    page = await ix.wait_message(lambda m: m.ephemeral and m.embeds)
    assert "alice" in page.text() or "Page 1/2" in page.text()
    assert "Job #2 cancelled" in await answer(fake, await crafted_click(fake, moderator, "fluxbot:cancel:2"))
    assert "deleted" in await answer(fake, await crafted_click(fake, moderator, job_buttons(bot, 1, ["delete"])[0],
                                                               message=result))
    assert result.deleted and (await store_jobs.get_job(bot.store, 2)).status == "cancelled"


def _old_job(user_id: int, i: int, guild_id: int | None = None):
    from db.records import NewJob
    return NewJob(user_id=user_id, prompt=f"old prompt {i}", seed=i, steps=2, width=256, height=256, guidance=3.5,
                  guild_id=guild_id)


async def test_generation_rights_are_checked_for_slash_buttons_and_modal(fake_discord, start_bot, make_rel_bot):
    fake = fake_discord
    artists = fake.add_role("artists")
    bot = await start_bot(await make_rel_bot(discord={"allowed_role_ids": [artists.id]}))
    await bot.engines.wait_loaded()
    alice, mallory = fake.add_user("alice", [artists]), fake.add_user("mallory")
    result = await (await imagine(fake, alice, prompt="a bonsai", seed=1)).wait_message(has_result, 30)
    # alice opens the Edit form; forms are answered statelessly from their custom_id, so a submit of alice's
    # form by mallory (a crafted request) must be checked against who submitted, not who opened.
    opener = await fake.click(alice, result, "Edit")
    form = (await opener.wait_response()).modal_custom_id
    assert form and form.startswith(edit_form_id(bot, 1)), form
    await asyncio.sleep(0.1)
    before = await count_rows(bot.store)
    ways_in = [
        await fake.slash(mallory, "imagine", {"prompt": "a bonsai", "size": "256x256"}),
        await fake.click(mallory, result, "Reroll"),
        await fake.click(mallory, result, "Vary (Subtle)"),
        await fake.click(mallory, result, "Edit"),
        await fake.submit_modal(mallory, form, {"prompt": "mallory's bonsai", "seed": "1", "steps": "1"},
                                message=result),
    ]
    for ix in ways_in:
        assert "roles allowed to generate" in await refusal(fake, ix)
    await asyncio.sleep(0.2)
    assert await count_rows(bot.store) == before


# --- file names --------------------------------------------------------------------------------------------------

PATH_PROMPTS = ["../../etc/passwd", "..\\..\\windows\\system32\\x", "/tmp/evil.png"]


async def test_file_names_come_from_the_job_id_never_from_the_prompt(fake_discord, start_bot, make_rel_bot,
                                                                    tmp_path):
    fake = fake_discord
    bot = await start_bot(await make_rel_bot())
    await bot.engines.wait_loaded()
    alice = fake.add_user("alice")
    results = [await (await imagine(fake, alice, prompt=p, seed=1, steps=1)).wait_message(has_result, 30)
               for p in PATH_PROMPTS]
    images = tmp_path / "images"
    # 1. On disk: <images_dir>/<database identity>-<job id>.png (and the folder's job-id mark) and nothing else anywhere under the test's folder.
    for job_id in range(1, len(PATH_PROMPTS) + 1):
        job = await store_jobs.get_job(bot.store, job_id)
        assert [Path(i.path) for i in job.images] == [images / f"{bot.identity}-{job_id}.png"]
    made = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert made - {"fluxbot.db", "fluxbot.db-wal", "fluxbot.db-shm", "images/.fluxbot-job-ids.json"} == \
        {f"images/{bot.identity}-{i}.png" for i in range(1, len(PATH_PROMPTS) + 1)}, made
    assert not Path("/tmp/evil.png").exists()
    # 2. On Discord: attachments are named by the job too; the prompt is only in the embed text.
    assert [r.attachments[0].filename for r in results] == [f"fluxbot_{i}_0.png" for i in range(1, 4)]
    assert "../../etc/passwd" in results[0].text()
