"""Downloading an attachment (bot/input_images.py `download`) from a real HTTP server on loopback: the body is read
only up to `[limits] max_input_mb`, whatever the server keeps sending, and a server that answers late or not at all
is a clear refusal, not a hang. (The e2e tests drive the same code through the fake Discord's CDN.)"""
from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from bot.input_images import download
from engine.image_input import ImageInputError

CHUNK = b"\0" * 65536


@pytest.fixture
async def cdn():
    """A loopback server: /endless streams zeros until the client goes away (counting what it sent), /slow answers
    after 5 s, /small sends 1000 bytes."""
    sent = {"bytes": 0}

    async def endless(request):
        response = web.StreamResponse(headers={"Content-Type": "image/png"})   # no Content-Length: chunked
        await response.prepare(request)
        try:
            while True:
                await response.write(CHUNK)
                sent["bytes"] += len(CHUNK)
        except (ConnectionError, asyncio.CancelledError):
            return response

    async def slow(request):
        await asyncio.sleep(5)
        return web.Response(body=b"late")

    async def small(request):
        return web.Response(body=b"\1" * 1000)

    app = web.Application()
    app.router.add_get("/endless", endless)
    app.router.add_get("/slow", slow)
    app.router.add_get("/small", small)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", sent
    await runner.cleanup()


async def test_an_endless_body_is_refused_once_past_the_limit(cdn):
    base, sent = cdn
    with pytest.raises(ImageInputError, match="larger than its attachment said: this bot accepts at most 1 MB"):
        await asyncio.wait_for(download(f"{base}/endless", max_mb=1.0), timeout=20)
    # the server was stopped soon after the limit (what loopback buffers is all it got further), not read to the end
    assert sent["bytes"] < 64 * 2**20


async def test_a_server_that_does_not_answer_in_time_is_a_clear_refusal(cdn):
    base, _ = cdn
    with pytest.raises(ImageInputError, match=r"could not be downloaded from Discord \(it took too long\)\. Attach "
                                              r"it again"):
        await download(f"{base}/slow", max_mb=1.0, timeout_s=0.5)


async def test_a_body_within_the_limit_is_returned_whole(cdn):
    base, _ = cdn
    assert await download(f"{base}/small", max_mb=1.0) == b"\1" * 1000
