"""What the console's form sends, checked like an /imagine: the same limits and wording (bot/validation.py,
engine/limits.py), one image per request. Gradio's number fields send floats (or None when emptied); a value that
is not a whole number is refused here, before anything is queued."""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from bot.validation import InvalidRequest, SizeChoice, validate_imagine
from engine.spec import JobSpec

if TYPE_CHECKING:
    from bot.config import Config

log = logging.getLogger(__name__)


def whole(value: float | int | str | None, name: str) -> int | None:
    """A whole number from a form field (None stays None); InvalidRequest for 2.5, NaN or text."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{name} must be a whole number, not {value!r}.") from None
    if not math.isfinite(number) or not number.is_integer():
        raise InvalidRequest(f"{name} must be a whole number, not {value!r}.")
    return int(number)


def spec_from_form(config: "Config", sizes: list[SizeChoice], *, prompt: str | None, seed: float | None,
                   steps: float | None, size: str | None, guidance: float | None) -> JobSpec:
    """The spec of one console request (seed None or -1: a random one, resolved when it is queued)."""
    opts = validate_imagine(config, sizes, prompt=prompt, seed=whole(seed, "Seed"), steps=whole(steps, "Steps"),
                            size=size or None, guidance=None if guidance is None else float(guidance), count=1)
    return JobSpec(prompt=opts.prompt, seed=opts.seed, steps=opts.steps, width=opts.width, height=opts.height,
                   guidance=opts.guidance, count=opts.count)
