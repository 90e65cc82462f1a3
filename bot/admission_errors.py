"""Refusals of a request before anything is queued. Each message is for the user, shown as is
(`bot.replies.report_error`); the jobs service (`bot.service`) raises them in its admission order."""
from __future__ import annotations


class AdmissionError(Exception):
    """A request was refused before anything was queued; `str(err)` is meant for the user."""


class EmptyPrompt(AdmissionError):
    pass


class PromptTooLong(AdmissionError):
    pass


class BannedWord(AdmissionError):
    def __init__(self, message: str, word: str):
        super().__init__(message)
        self.word = word


class TooManyImages(AdmissionError):
    pass


class JobTooCostly(AdmissionError):
    pass


class TooManyUnfinished(AdmissionError):
    pass


class CoolingDown(AdmissionError):
    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFull(AdmissionError):
    pass


class GuildQueueFull(AdmissionError):
    pass


class ShuttingDown(AdmissionError):
    pass


class StoreGone(AdmissionError):
    """The database file was deleted or replaced while the bot ran (db.guard)."""
