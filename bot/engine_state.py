"""Whether the image engine is loading, ready, or failed to start — and what users are told about it.

`FluxBot` holds one `EngineState`, replaced (never mutated) as its workers load. The reason of a failure is
the engine's own user-safe message (an `EngineError`, e.g. `ModelNotFoundError`'s); any other exception is
named by its type only, because its text may hold anything (paths, URLs with credentials, a trace).
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from bot.replies import UserFacingError
from engine.errors import EngineError

log = logging.getLogger(__name__)

DOCTOR_HINT = "The bot owner can run `python -m bot doctor`."


class EngineStatus(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class EngineState:
    """The engine as users see it. `reason` is set when FAILED; `devices` are those whose engine runs."""
    status: EngineStatus = EngineStatus.LOADING
    reason: str = ""
    devices: tuple[str, ...] = ()

    @property
    def loading(self) -> bool:
        return self.status is EngineStatus.LOADING

    @property
    def failed(self) -> bool:
        return self.status is EngineStatus.FAILED

    def summary(self) -> str:
        """One line for /queue."""
        if self.status is EngineStatus.READY:
            return f"🟢 Engine ready on {', '.join(self.devices) or 'its device'}."
        if self.status is EngineStatus.LOADING:
            return "⏳ The model is loading; jobs wait in the queue until it is ready."
        return f"⚠️ {failed_text(self.reason)}"


class EngineUnavailable(UserFacingError):
    """A request refused because the engine failed to start; nothing was queued."""


def failed_text(reason: str) -> str:
    """What a user is told while the engine has failed."""
    return f"The image engine failed to start: {reason.rstrip('.')}. {DOCTOR_HINT}"


def failure_reason(error: BaseException) -> str:
    """A user-safe reason for a failed engine load: an EngineError's own message, else the exception's type."""
    if isinstance(error, EngineError) and str(error).strip():
        return str(error).strip()
    return f"an unexpected {type(error).__name__} while loading the model (the bot's log has the details)"


def check_can_generate(state: EngineState) -> None:
    """Refuse a new job while the engine has failed (raises EngineUnavailable); loading is fine: jobs wait."""
    if state.failed:
        raise EngineUnavailable(failed_text(state.reason) + " Nothing was queued.")
