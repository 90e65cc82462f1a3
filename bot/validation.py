"""What a user may ask of /imagine: size choices from the config and the bot-side checks of every option.

Discord's own option ranges are a convenience for the client, not a guarantee (a crafted request can send
anything), so every value is checked here again before a job exists.
"""
from __future__ import annotations

import logging
import math
import re
import unicodedata
from dataclasses import dataclass

from bot.config import ConfigError, Config
from engine.spec import MAX_SEED

log = logging.getLogger(__name__)

MIN_STEPS, MAX_STEPS = 1, 50
MIN_GUIDANCE, MAX_GUIDANCE = 1.0, 10.0
MAX_SIZE_CHOICES = 25  # Discord's limit on choices of one option
MIN_SIDE, MAX_SIDE = 256, 2048  # what the engine accepts (engine/pipeline.py check_spec)
# Invisible direction controls (embeddings, overrides, isolates): never needed to write right-to-left text,
# but they can make a prompt display as something else in embeds and logs.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
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
        if w % 16 or h % 16 or not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE):
            raise ConfigError(f"[discord] sizes: {item!r}: width and height must be multiples of 16 "
                              f"from {MIN_SIDE} to {MAX_SIDE}")
        sizes.append(SizeChoice(m["label"] or _ratio(w, h), w, h))
    return sizes


def _ratio(w: int, h: int) -> str:
    g = math.gcd(w, h)
    return f"{w // g}:{h // g}"


def clean_prompt(text: str) -> str:
    """The prompt without control characters (newlines and tabs stay) and without bidi override controls.
    Emoji (with their zero-width joiners) and right-to-left scripts pass unchanged."""
    return "".join(ch for ch in text if ch in "\n\t" or
                   (unicodedata.category(ch) != "Cc" and ch not in _BIDI_CONTROLS))


def validate_imagine(config: Config, sizes: list[SizeChoice], *, prompt: str | None, seed: int | None = None,
                     steps: int | None = None, size: str | None = None, guidance: float | None = None,
                     count: int | None = None) -> ImagineOptions:
    """Check every option of /imagine (or of the Edit modal); raise InvalidRequest with what to change."""
    # 1. The prompt: control characters stripped, not empty, not longer than the limit.
    text = clean_prompt(prompt or "").strip()
    limit = config.limits.max_prompt_chars
    if not text:
        raise InvalidRequest("The prompt is empty: describe the image you want.")
    if len(text) > limit:
        raise InvalidRequest(f"The prompt is {len(text)} characters long; the limit is {limit}. Shorten it.")
    # 2. The seed: empty or -1 is random, else 0..MAX_SEED.
    if seed is not None and seed != -1 and not (0 <= seed <= MAX_SEED):
        raise InvalidRequest(f"Seed {seed} is out of range: use 0 to {MAX_SEED}, or -1 for a random seed.")
    # 3. Steps, guidance, count within their ranges.
    steps = config.engine.default_steps if steps is None else steps
    if not (MIN_STEPS <= steps <= MAX_STEPS):
        raise InvalidRequest(f"Steps must be between {MIN_STEPS} and {MAX_STEPS}, not {steps}.")
    guidance = config.engine.default_guidance if guidance is None else guidance
    if not (isinstance(guidance, (int, float)) and MIN_GUIDANCE <= guidance <= MAX_GUIDANCE):
        raise InvalidRequest(f"Guidance must be between {MIN_GUIDANCE:g} and {MAX_GUIDANCE:g}, not {guidance}.")
    count = 1 if count is None else count
    if not (1 <= count <= config.limits.max_count):
        raise InvalidRequest(f"Count must be between 1 and {config.limits.max_count}, not {count}.")
    # 4. The size: one of the offered choices.
    choice = sizes[0] if size is None else next((s for s in sizes if s.value == size), None)
    if choice is None:
        offered = ", ".join(s.value for s in sizes)
        raise InvalidRequest(f"Size {size!r} is not offered; pick one of {offered}.")
    return ImagineOptions(prompt=text, seed=None if seed in (None, -1) else seed, steps=steps,
                          width=choice.width, height=choice.height, guidance=float(guidance), count=count)
