"""A fake Discord (REST + gateway on loopback, aiohttp) that a real discord.py 2.x client talks to in tests."""
from .faults import UNKNOWN_INTERACTION, UNKNOWN_MESSAGE, UNKNOWN_WEBHOOK, Fault
from .harness import start_bot, stop_bot
from .interaction import FakeInteraction
from .options import Upload
from .records import FakeAttachment, FakeChannel, FakeMessage, FakeResponse, FakeRole, FakeUser, RecordedRequest
from .server import FakeDiscord

__all__ = ["FakeDiscord", "FakeInteraction", "FakeMessage", "FakeResponse", "FakeUser", "FakeRole", "FakeChannel",
           "FakeAttachment", "RecordedRequest", "Fault", "Upload", "start_bot", "stop_bot",
           "UNKNOWN_INTERACTION", "UNKNOWN_MESSAGE", "UNKNOWN_WEBHOOK"]
