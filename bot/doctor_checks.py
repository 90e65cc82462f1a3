"""One line of `python -m bot doctor`'s report and its statuses (shared by bot/doctor.py and bot/doctor_ray.py)."""
from __future__ import annotations

from dataclasses import dataclass

OK, WARN, FAIL, INFO = "ok", "warn", "FAIL", "info"


@dataclass(frozen=True)
class Check:
    """One line of the report. `status` FAIL means the bot could not start."""
    topic: str
    status: str
    text: str
