"""What a user may ask of /imagine: size choices from the config and the bot-side checks of every option.

Discord's own option ranges are a convenience for the client, not a guarantee (a crafted request can send
anything), so every value is checked here again before a job exists.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

from bot.config import ConfigError, Config
from engine import limits  # the limits and their wording, shared with the CLI and the engine
from engine.limits import LimitError

log = logging.getLogger(__name__)

MAX_SIZE_CHOICES = 25  # Discord's limit on choices of one option
_SIZE_RE = re.compile(r"^\s*(?:(?P<label>\S+)\s+)?(?P<w>\d+)\s*[x×]\s*(?P<h>\d+)\s*$")


class InvalidRequest(Exception):
    """A request option is out of range. The message is shown to the user as is."""


@dataclass(frozen=True)
class SizeChoice:
    label: str
    width: int
    height: int

    @property
    def value(self) -> str:
        """What Discord sends back when the user picks this choice."""
        return f"{self.width}x{self.height}"

    @property
    def title(self) -> str:
        """What the user sees in the choice list."""
        return f"{self.label} {self.width}×{self.height}" if self.label else f"{self.width}×{self.height}"


@dataclass(frozen=True)
class ImagineOptions:
    """A validated /imagine request; `seed` None means "pick a random one"."""
    prompt: str
    seed: int | None
    steps: int
    width: int
    height: int
    guidance: float
    count: int


def parse_sizes(items: list[str]) -> list[SizeChoice]:
    """`[discord] sizes` as SizeChoices; a bad item raises ConfigError naming it."""
    if not items:
        raise ConfigError("[discord] sizes is empty: list at least one size, e.g. [\"1:1 1024x1024\"]")
    if len(items) > MAX_SIZE_CHOICES:
        raise ConfigError(f"[discord] sizes has {len(items)} items; Discord shows at most {MAX_SIZE_CHOICES}")
    sizes = []
    for item in items:
        m = _SIZE_RE.match(item)
        if not m:
            raise ConfigError(f"[discord] sizes: {item!r} is not 'LABEL WIDTHxHEIGHT', e.g. '3:4 896x1152'")
        w, h = int(m["w"]), int(m["h"])
        problem = limits.side_problem("width", w) or limits.side_problem("height", h)
        if problem:
            raise ConfigError(f"[discord] sizes: {item!r}: {problem}")
        sizes.append(SizeChoice(m["label"] or _ratio(w, h), w, h))
    return sizes


def _ratio(w: int, h: int) -> str:
    g = math.gcd(w, h)
    return f"{w // g}:{h // g}"


def validate_imagine(config: Config, sizes: list[SizeChoice], *, prompt: str | None, seed: int | None = None,
                     steps: int | None = None, size: str | None = None, guidance: float | None = None,
                     count: int | None = None) -> ImagineOptions:
    """Check every option of /imagine (or of the Edit modal); raise InvalidRequest with what to change."""
    try:
        # 1. The prompt: control characters stripped, something visible, not longer than the limit.
        text = limits.check_prompt(prompt, config.limits.max_prompt_chars)
        # 2. The seed: empty or -1 is random, else 0..MAX_SEED.
        seed = limits.check_seed(seed)
        # 3. Steps, guidance, count within their ranges.
        steps = limits.check_steps(config.engine.default_steps if steps is None else steps)
        guidance = limits.check_guidance(config.engine.default_guidance if guidance is None else guidance)
        count = limits.check_count(1 if count is None else count, config.limits.max_count)
    except LimitError as e:
        raise InvalidRequest(str(e)) from None
    # 4. The size: one of the offered choices.
    choice = sizes[0] if size is None else next((s for s in sizes if s.value == size), None)
    if choice is None:
        offered = ", ".join(s.value for s in sizes)
        raise InvalidRequest(f"Size {size!r} is not offered; pick one of {offered}.")
    return ImagineOptions(prompt=text, seed=seed, steps=steps, width=choice.width, height=choice.height,
                          guidance=guidance, count=count)
