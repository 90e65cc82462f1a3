"""Logging set-up: file and console handlers, levels, and the token never reaching a log."""
from __future__ import annotations

import io
import logging

import pytest

from bot.config import LoggingSettings
from bot.logging_setup import MASK, setup_logging

# Shaped like a real bot token (user id . timestamp . HMAC), but not one.
TOKEN = "MTA5ODc2NTQzMjEwOTg3NjU0.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456789AB"
OTHER_TOKEN = "OTk5ODg4Nzc3NjY2NTU1NDQz.Gzzzzz.ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zz"


@pytest.fixture
def handles(tmp_path):
    stream = io.StringIO()
    settings = LoggingSettings(file="logs/sub/fluxbot.log", level="INFO", discord_level="WARNING")
    h = setup_logging(settings, data_dir=tmp_path, secrets=[TOKEN], stream=stream)
    h.stream = stream
    yield h
    h.close()


def _flush(h):
    for handler in (h.console, h.file):
        handler.flush()


def test_token_is_masked_in_the_file_and_on_the_console(handles, tmp_path):
    log = logging.getLogger("bot.client")
    log.info("logging in with %s", TOKEN)
    log.warning("header was Authorization: Bot " + OTHER_TOKEN)
    try:
        raise RuntimeError(f"login failed for {TOKEN}")
    except RuntimeError:
        log.exception("login error")
    _flush(handles)
    written = (tmp_path / "logs/sub/fluxbot.log").read_text()
    console = handles.stream.getvalue()
    for text in (written, console):
        assert TOKEN not in text and OTHER_TOKEN not in text
        assert text.count(MASK) >= 3  # message, the look-alike, and the traceback
        assert "RuntimeError" in text and "logging in with" in text


def test_levels_follow_the_config(handles, tmp_path):
    logging.getLogger("engine.pipeline").debug("engine debug line")
    logging.getLogger("engine.pipeline").info("engine info line")
    logging.getLogger("discord.gateway").info("discord info line")
    logging.getLogger("discord.gateway").warning("discord warning line")
    logging.getLogger("some.library").info("library info line")
    _flush(handles)
    written = (tmp_path / "logs/sub/fluxbot.log").read_text()
    assert "engine info line" in written and "discord warning line" in written
    assert "engine debug line" not in written and "discord info line" not in written
    assert "library info line" not in written


def test_a_second_setup_replaces_the_handlers_instead_of_doubling_lines(tmp_path):
    settings = LoggingSettings(file=str(tmp_path / "a.log"))
    first = setup_logging(settings, stream=io.StringIO())
    second = setup_logging(settings, stream=io.StringIO())
    try:
        logging.getLogger("bot").warning("once")
        second.file.flush()
        assert (tmp_path / "a.log").read_text().count("once") == 1
        assert first.console not in logging.getLogger().handlers
    finally:
        second.close()


def test_console_only_when_file_is_empty(tmp_path):
    h = setup_logging(LoggingSettings(file=""), stream=io.StringIO())
    try:
        assert h.file is None and h.file_path is None
    finally:
        h.close()


def test_interaction_tokens_are_masked_in_urls_and_token_fields(handles, tmp_path):
    ix_token = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5OmFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6"
    log = logging.getLogger("bot.delivery")
    log.info("POST https://discord.com/api/v10/webhooks/1098765432109876543/%s?wait=true has returned 200", ix_token)
    log.info("PATCH /webhooks/1098765432109876543/%s/messages/@original", ix_token)
    log.info("POST https://discord.com/api/v10/interactions/1234567890123456789/%s/callback", ix_token)
    log.info("event: {'t': 'INTERACTION_CREATE', 'd': {'id': '1', 'token': '%s', 'type': 2}}", ix_token)
    log.info('json: {"token": "%s", "type": 2}', ix_token)
    _flush(handles)
    for text in ((tmp_path / "logs/sub/fluxbot.log").read_text(), handles.stream.getvalue()):
        assert ix_token not in text
        assert text.count(MASK) == 5
        assert "/webhooks/1098765432109876543/[token hidden]?wait=true" in text  # the rest of the line stays
        assert "/interactions/1234567890123456789/[token hidden]/callback" in text
