"""Errors that end a command with one line for the owner instead of a traceback (bot.cli prints them)."""
from __future__ import annotations


class CannotStart(Exception):
    """The bot cannot run (e.g. Discord out of reach); the message is the one line the owner sees."""
