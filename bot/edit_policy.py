"""Which changes of a waiting job's line are worth an edit of its status message.

Every queue movement re-announces every waiting job, and those edits were half of the bot's REST traffic under load
(docs/reliability.md "Load"): a waiting job's line is edited only when its position moved noticeably or its ETA
moved a lot. Running progress and the final state are always shown.
"""
from __future__ import annotations

from bot.embeds import StatusLine
from engine.job_status import JobStatus

# A waiting job's line is edited again when (against what it shows or is about to show) its position is one of
# the first FRONT_POSITIONS and changed, or moved by at least POSITION_STEP of the shown position (40 → 30,
# 8 → 6), or its ETA moved by at least max(ETA_STEP_S, ETA_STEP of the shown ETA).
FRONT_POSITIONS = 3
POSITION_STEP = 0.25
ETA_STEP = 0.25
ETA_STEP_S = 10.0


def worth_an_edit(shown: StatusLine | None, new: StatusLine) -> bool:
    """Whether a waiting job's new position/ETA deserves an edit of its line, against what the line shows (or is
    about to show). Anything that is not a waiting-to-waiting change always does."""
    # 1. Nothing shown yet, or a change of state: always.
    if shown is None or shown.state is not JobStatus.QUEUED or new.state is not JobStatus.QUEUED:
        return True
    # 2. The position: every change near the front, a noticeable share of it further back.
    if new.position != shown.position:
        if new.position is None or shown.position is None or new.position <= FRONT_POSITIONS:
            return True
        if abs(shown.position - new.position) >= POSITION_STEP * shown.position:
            return True
    # 3. The ETA: a lot, in seconds and in share.
    if (new.eta_s is None) != (shown.eta_s is None):
        return True
    if new.eta_s is not None and shown.eta_s is not None:
        return abs(new.eta_s - shown.eta_s) >= max(ETA_STEP_S, ETA_STEP * shown.eta_s)
    return False
