"""The fake Discord, proven with a real discord.py commands.Bot (test-only) over loopback."""
from __future__ import annotations

import asyncio
import io
import struct
import time
import zlib

import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.fakediscord import UNKNOWN_MESSAGE, UNKNOWN_WEBHOOK, FakeDiscord


def tiny_png(w: int = 3, h: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"\x00\x00\x00" * w for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


class AgainButton(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Again", custom_id="test:again", style=discord.ButtonStyle.primary)
    async def again(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.edit_message(content=f"clicked by {interaction.user.name}")


class AskModal(discord.ui.Modal, title="Ask the bot"):
    prompt = discord.ui.TextInput(label="Prompt", custom_id="prompt")
    seed = discord.ui.TextInput(label="Seed", custom_id="seed", required=False)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"asked {self.prompt.value!r} seed {self.seed.value!r}", ephemeral=True,
                                                file=discord.File(io.BytesIO(tiny_png(5, 4)), "answer.png"))


class PingBot(commands.Bot):
    """A minimal bot: /ping defers then follows up with a PNG and a button; /ask opens a modal;
    /slow waits for the test before following up; /announce posts in the channel."""

    def __init__(self, sync_guild_id: int | None = None) -> None:
        super().__init__(command_prefix="!", intents=discord.Intents.default())
        self.sync_guild_id = sync_guild_id
        self.release = asyncio.Event()
        self.errors: list[Exception] = []
        self.followups: list[discord.WebhookMessage] = []

        @self.tree.command(name="ping", description="Answer with a picture")
        @app_commands.describe(text="what to echo", count="how many")
        async def ping(interaction: discord.Interaction, text: str, count: app_commands.Range[int, 1, 4] = 1,
                       loud: bool = False) -> None:
            await interaction.response.defer(thinking=True)
            msg = await interaction.followup.send(f"pong {text} x{count}{'!' if loud else ''}",
                                                  file=discord.File(io.BytesIO(tiny_png()), "pong.png"),
                                                  view=AgainButton(), wait=True)
            self.followups.append(msg)

        @self.tree.command(name="ask", description="Open a modal")
        async def ask(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(AskModal())

        @self.tree.command(name="slow", description="Follow up when the test says so")
        async def slow(interaction: discord.Interaction) -> None:
            await interaction.response.defer()
            await self.release.wait()
            try:
                await interaction.followup.send("late")
            except discord.HTTPException as e:
                self.errors.append(e)

        @self.tree.command(name="status", description="Edit the deferred response twice")
        async def status(interaction: discord.Interaction) -> None:
            await interaction.response.defer()
            await interaction.edit_original_response(content="queued #1")
            await interaction.edit_original_response(content="done", attachments=[
                discord.File(io.BytesIO(tiny_png()), "done.png")])

        @self.tree.command(name="announce", description="Post in the channel")
        async def announce(interaction: discord.Interaction, text: str) -> None:
            await interaction.response.send_message("posting", ephemeral=True)
            await interaction.channel.send(text, file=discord.File(io.BytesIO(b"hello"), "note.txt"))

    async def setup_hook(self) -> None:
        self.add_view(AgainButton())
        if self.sync_guild_id:
            guild = discord.Object(self.sync_guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()


@pytest.fixture
async def bot(fake_discord: FakeDiscord, start_bot) -> PingBot:
    return await start_bot(PingBot())


async def test_login_ready_and_command_sync(fake_discord: FakeDiscord, bot: PingBot) -> None:
    assert bot.user is not None and bot.user.id == fake_discord.bot_user.id
    assert bot.application_id == fake_discord.application_id
    guild = bot.get_guild(fake_discord.guild_id)
    assert guild is not None and guild.get_channel(fake_discord.channel.id) is not None
    # without the presences intent Discord lists only the bot itself among the members, as here
    assert guild.me is not None and guild.get_member(fake_discord.owner.id) is None and guild.member_count == 2
    assert sorted(fake_discord.global_commands) == ["announce", "ask", "ping", "slow", "status"]
    ping = fake_discord.global_commands["ping"]
    assert [(o["name"], o["type"], o.get("required", False)) for o in ping["options"]] == [
        ("text", 3, True), ("count", 4, False), ("loud", 5, False)]
    assert fake_discord.unknown_routes == []


async def test_slash_defer_then_followup_with_file_and_button_click(fake_discord: FakeDiscord, bot: PingBot) -> None:
    alice = fake_discord.add_user("alice")
    ix = await fake_discord.slash(alice, "ping", {"text": "hi", "count": "3", "loud": True})
    response = await ix.wait_response(timeout=5)
    assert response.type == 5 and response.latency_s < 3
    msg = await ix.wait_message(lambda m: m.attachments, timeout=5)
    # the first followup after a defer replaces the "thinking…" message, as on Discord
    assert msg.kind == "response" and not msg.loading and len(ix.messages) == 1
    assert msg.content == "pong hi x3!"
    assert [(a.filename, a.image_size) for a in msg.attachments] == [("pong.png", (3, 2))]
    assert msg.attachments[0].data == tiny_png()
    assert [(b.custom_id, b.label) for b in msg.buttons] == [("test:again", "Again")]

    bob = fake_discord.add_user("bob")
    click = await fake_discord.click(bob, msg, "Again")
    assert (await click.wait_response()).type == 7
    assert msg.content == "clicked by bob" and msg.edits == 2  # loading → pong → clicked
    assert msg.history[1].content == "pong hi x3!"


async def test_options_are_checked_against_the_synced_schema(fake_discord: FakeDiscord, bot: PingBot) -> None:
    alice = fake_discord.add_user("alice")
    with pytest.raises(ValueError, match="max_value"):
        await fake_discord.slash(alice, "ping", {"text": "x", "count": 9})
    with pytest.raises(ValueError, match="required"):
        await fake_discord.slash(alice, "ping", {"count": 1})
    with pytest.raises(LookupError, match="no command /nope"):
        await fake_discord.slash(alice, "nope")


async def test_modal_submit(fake_discord: FakeDiscord, bot: PingBot) -> None:
    alice = fake_discord.add_user("alice")
    ix = await fake_discord.slash(alice, "ask")
    response = await ix.wait_response()
    assert response.type == 9 and response.modal_custom_id
    submit = await fake_discord.submit_modal(alice, response.modal_custom_id, {"prompt": "a cat", "Seed": "7"})
    answer = await submit.wait_message()
    assert answer.content == "asked 'a cat' seed '7'" and answer.ephemeral
    assert [(a.filename, a.image_size) for a in answer.attachments] == [("answer.png", (5, 4))]


async def test_edit_original_response_keeps_history(fake_discord: FakeDiscord, bot: PingBot) -> None:
    alice = fake_discord.add_user("alice")
    ix = await fake_discord.slash(alice, "status")
    msg = await ix.wait_message(lambda m: m.content == "done")
    assert [h.content for h in msg.history] == ["", "queued #1"] and msg.history[0].flags & 128
    assert [a.filename for a in msg.attachments] == ["done.png"] and len(ix.messages) == 1


async def test_a_restarted_bot_reconnects_to_the_same_fake(fake_discord: FakeDiscord, start_bot, stop_bot) -> None:
    first = await start_bot(PingBot())
    alice = fake_discord.add_user("alice")
    ix = await fake_discord.slash(alice, "ping", {"text": "one"})
    old = await ix.wait_message(lambda m: m.attachments)
    await stop_bot(first)
    with pytest.raises(RuntimeError, match="no client"):
        await fake_discord.click(alice, old, "test:again")
    await start_bot(PingBot())
    click = await fake_discord.click(alice, old, "test:again")  # a persistent view survives the restart
    await click.wait_response()
    assert old.content == "clicked by alice" and fake_discord.identify_count == 2


async def test_dm_interaction_and_channel_message(fake_discord: FakeDiscord, bot: PingBot) -> None:
    carol = fake_discord.add_user("carol", in_guild=False)
    ix = await fake_discord.slash(carol, "ping", {"text": "dm"}, dm=True)
    msg = await ix.wait_message(lambda m: m.attachments)
    assert msg.guild_id is None and msg.channel_id == fake_discord.dm_channel(carol).id

    alice = fake_discord.add_user("alice")
    ix = await fake_discord.slash(alice, "announce", {"text": "hello all"})
    posted = await ix.wait_message(lambda m: m.kind == "channel", anywhere=True)
    assert posted.content == "hello all" and posted.attachments[0].data == b"hello"
    assert [m.kind for m in fake_discord.channel_messages()] == ["response", "channel"]


async def test_rate_limit_429_is_retried_after_retry_after(fake_discord: FakeDiscord, bot: PingBot) -> None:
    rule = fake_discord.fail(r"^/webhooks/\d+/[^/]+$", 429, retry_after=0.3, method="POST")
    alice = fake_discord.add_user("alice")
    t0 = time.monotonic()
    ix = await fake_discord.slash(alice, "ping", {"text": "rl"})
    msg = await ix.wait_message(lambda m: m.attachments, timeout=5)
    posts = fake_discord.requests_to(r"^/webhooks/", "POST")
    assert rule.hits == 1 and [r.status for r in posts] == [429, 200]
    assert posts[1].at - posts[0].at >= 0.3 and time.monotonic() - t0 >= 0.3
    assert len(ix.messages) == 1 and msg.content == "pong rl x1"


async def test_rate_limit_headers_make_discord_py_wait_for_the_bucket(fake_discord: FakeDiscord, bot: PingBot) -> None:
    rule = fake_discord.rate_limit(r"^/channels/\d+/messages$", 2, 1.0, method="POST")
    alice = fake_discord.add_user("alice")
    for i in range(3):
        await fake_discord.slash(alice, "announce", {"text": f"note {i}"})
    await fake_discord.wait_until(lambda: len([m for m in fake_discord.messages if m.kind == "channel"]) == 3, 5,
                                  "three channel messages")
    posts = [r for r in fake_discord.requests_to(r"^/channels/\d+/messages$", "POST") if r.status == 200]
    assert len(posts) == 3 and posts[2].at - posts[0].at >= 0.9  # the third waited for the window to reset
    assert rule.requests == 3 and rule.limited == 0  # discord.py waited on Remaining 0 instead of getting 429
    assert sorted(m.content for m in fake_discord.messages if m.kind == "channel") == ["note 0", "note 1", "note 2"]


async def test_rate_limit_over_budget_answers_429(fake_discord: FakeDiscord) -> None:
    import aiohttp

    rule = fake_discord.rate_limit(r"^/users/@me$", 1, 5.0)
    headers = {"Authorization": f"Bot {fake_discord.token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(fake_discord.api_base + "/users/@me", headers=headers) as first:
            assert first.status == 200 and first.headers["X-RateLimit-Remaining"] == "0"
        async with http.get(fake_discord.api_base + "/users/@me", headers=headers) as second:
            body = await second.json()
            assert second.status == 429 and second.headers["Via"] and 4 < body["retry_after"] <= 5
    assert rule.limited == 1


async def test_server_error_500_is_retried(fake_discord: FakeDiscord, bot: PingBot) -> None:
    fake_discord.fail(r"/callback$", 500)
    alice = fake_discord.add_user("alice")
    ix = await fake_discord.slash(alice, "ping", {"text": "500"})
    await ix.wait_message(lambda m: m.attachments, timeout=5)  # discord.py sleeps 1 s, then retries
    assert [r.status for r in fake_discord.requests_to(r"/callback$")] == [500, 200]
    fake_discord.fail(r"/callback$", 500, times=100)
    fake_discord.clear_faults()  # Discord is healthy again
    ix = await fake_discord.slash(alice, "ping", {"text": "healthy"})
    await ix.wait_message(lambda m: m.attachments, timeout=5)
    assert [r.status for r in fake_discord.requests_to(r"/callback$")] == [500, 200, 200]


async def test_expired_token_gives_unknown_webhook(fake_discord: FakeDiscord, bot: PingBot) -> None:
    alice = fake_discord.add_user("alice")
    ix = await fake_discord.slash(alice, "slow")
    await ix.wait_response()
    fake_discord.advance(15 * 60 + 1)  # the token lives 15 minutes
    bot.release.set()
    await fake_discord.wait_until(lambda: bot.errors, 5, "the bot's followup to fail")
    err = bot.errors[0]
    assert isinstance(err, discord.NotFound) and err.code == UNKNOWN_WEBHOOK
    assert [m.loading for m in ix.messages] == [True]  # nothing delivered


async def test_late_or_expired_callback_is_unknown_interaction(fake_discord: FakeDiscord, bot: PingBot) -> None:
    alice = fake_discord.add_user("alice")
    fake_discord.fail(r"/callback$", 404)
    ix = await fake_discord.slash(alice, "ask")
    await fake_discord.wait_until(lambda: fake_discord.requests_to(r"/callback$"), 5, "the callback")
    assert ix.response is None and fake_discord.requests_to(r"/callback$")[0].status == 404
    assert fake_discord.requests_to(r"/callback$")[0].fault


async def test_deleted_message_edit_is_unknown_message(fake_discord: FakeDiscord, bot: PingBot) -> None:
    alice = fake_discord.add_user("alice")
    ix = await fake_discord.slash(alice, "ping", {"text": "del"})
    msg = await ix.wait_message(lambda m: m.attachments)
    await fake_discord.delete_message(msg)
    with pytest.raises(discord.NotFound) as caught:
        await bot.followups[0].edit(content="edited")
    assert caught.value.code == UNKNOWN_MESSAGE and msg.content == "pong del x1"


async def test_guild_sync_and_gateway_resume(fake_discord: FakeDiscord, start_bot) -> None:
    bot = await start_bot(PingBot(sync_guild_id=fake_discord.guild_id))
    assert sorted(fake_discord.guild_commands[fake_discord.guild_id]) == ["announce", "ask", "ping", "slow", "status"]
    await fake_discord.reconnect()
    await fake_discord.wait_until(lambda: fake_discord.resume_count == 1, 10, "a RESUME")
    assert bot.is_ready() and fake_discord.identify_count == 1  # resumed, not a new session
    alice = fake_discord.add_user("alice", roles=["artists"])
    ix = await fake_discord.slash(alice, "ping", {"text": "after resume"})
    assert ix.data["guild_id"] == str(fake_discord.guild_id)
    assert (await ix.wait_message(lambda m: m.attachments)).content == "pong after resume x1"
