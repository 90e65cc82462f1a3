"""What a job may ask for, and the checks, in one place: the bot (bot/validation.py, bot/service.py), the CLI
(bot/generate_cmd.py) and the engine (engine/pipeline.py check_spec) import them, so a limit and its wording
are written once. No torch here: the bot and the config import this module before any model is loaded.

Each `check_*` returns the (cleaned) value or raises `LimitError`, whose message is shown to the user as is
and says what to change.
"""
from __future__ import annotations

import math
import unicodedata

MIN_STEPS, MAX_STEPS = 1, 50
MIN_GUIDANCE, MAX_GUIDANCE = 1.0, 10.0
MIN_SIDE, MAX_SIDE, SIDE_STEP = 256, 2048, 16
MAX_SEED = 2**32 - 1  # seeds are 0..MAX_SEED; -1 (or none) asks for a random one
MAX_COUNT = 4  # images per job; `[limits] max_count` may lower it
MAX_PROMPT_CHARS = 6000  # Discord's longest option value; `[limits] max_prompt_chars` may lower it
MIN_VARIATION, MAX_VARIATION = 0.0, 1.0
MIN_LORA_STRENGTH, MAX_LORA_STRENGTH = -2.0, 2.0
MAX_LORAS = 8  # LoRAs per job; `[limits] max_loras` may lower it
MIN_DENOISE, MAX_DENOISE = 0.0, 1.0  # img2img strength (A1111's "Denoising strength")
# Cost of a job = images x steps x megapixels (MiB of pixels: 1024x1024 is 1.0), about proportional to its
# GPU time. The default cap lets through the largest job the default sizes allow (4 x 50 x ~1.0 = 200) and
# refuses e.g. 4 images x 50 steps at 2048x2048 (800) unless the owner raises it; 0 turns the cap off.
DEFAULT_MAX_JOB_COST = 200.0

# Invisible direction controls (embeddings, overrides, isolates): never needed to write right-to-left text,
# but they can make a prompt display as something else in embeds and logs. Removed from every prompt.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Characters that render as nothing on their own and are never part of an emoji sequence: trimmed from the
# ends of a prompt like spaces. (Zero-width space and non-joiner, word joiner, invisible operators, BOM, soft
# hyphen, Mongolian vowel separator, the Hangul fillers, the braille blank.)
_FILLERS = frozenset("\u200b\u200c\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u180e"
                     "\u3164\u115f\u1160\uffa0\u2800")


class LimitError(ValueError):
    """A request asks for something outside the limits. The message is meant for the user as is."""


class PromptEmpty(LimitError):
    pass


class PromptTooLong(LimitError):
    pass


class JobTooCostly(LimitError):
    pass


# --------------------------------------------------------------------------------------------------- prompt

def clean_prompt(text: str) -> str:
    """The prompt without control characters (newlines and tabs stay) and bidi controls, and with spaces and
    invisible fillers trimmed from both ends. Emoji (with their zero-width joiners, variation selectors and
    tag sequences) and right-to-left scripts pass unchanged."""
    kept = "".join(ch for ch in text if ch in "\n\t" or
                   (unicodedata.category(ch) != "Cc" and ch not in _BIDI_CONTROLS))
    return _trim(kept)


def renders_as_nothing(ch: str) -> bool:
    """True for a character that shows nothing on its own: whitespace, the fillers above, format characters
    (zero-width joiner, tag characters U+E0000-E007F, …), variation selectors, combining grapheme joiner."""
    if ch.isspace() or ch in _FILLERS:
        return True
    code = ord(ch)
    if 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF or code == 0x034F:  # variation selectors, CGJ
        return True
    return unicodedata.category(ch) in ("Cf", "Cc")


def is_blank(text: str) -> bool:
    """True when nothing of the text would show: every character renders as nothing."""
    return all(renders_as_nothing(ch) for ch in text)


def check_prompt(text: str | None, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """The cleaned prompt, or PromptEmpty / PromptTooLong saying what to change."""
    cleaned = clean_prompt(text or "")
    if is_blank(cleaned):
        raise PromptEmpty("The prompt is empty: describe the image you want.")
    limit = min(max_chars, MAX_PROMPT_CHARS)
    if len(cleaned) > limit:
        raise PromptTooLong(f"The prompt is {len(cleaned)} characters long; the limit is {limit}. Shorten it.")
    return cleaned


def _trim(text: str) -> str:
    start, end = 0, len(text)
    while start < end and (text[start].isspace() or text[start] in _FILLERS):
        start += 1
    while end > start and (text[end - 1].isspace() or text[end - 1] in _FILLERS):
        end -= 1
    return text[start:end]


# -------------------------------------------------------------------------------------------------- numbers

def check_seed(seed: int | None, name: str = "Seed") -> int | None:
    """None for "random" (None or -1), else the seed in 0..MAX_SEED; out of range is refused, never wrapped."""
    if seed is None or seed == -1:
        return None
    if not 0 <= seed <= MAX_SEED:
        raise LimitError(f"{name} {seed} is out of range: use 0 to {MAX_SEED}, or -1 for a random seed.")
    return seed


def check_steps(steps: int) -> int:
    if not MIN_STEPS <= steps <= MAX_STEPS:
        raise LimitError(f"Steps must be between {MIN_STEPS} and {MAX_STEPS}, not {steps}.")
    return steps


def check_guidance(guidance: float) -> float:
    if not (isinstance(guidance, (int, float)) and math.isfinite(guidance) and
            MIN_GUIDANCE <= guidance <= MAX_GUIDANCE):
        raise LimitError(f"Guidance must be between {MIN_GUIDANCE:g} and {MAX_GUIDANCE:g}, not {guidance}.")
    return float(guidance)


def check_count(count: int, max_count: int = MAX_COUNT) -> int:
    limit = min(max_count, MAX_COUNT)
    if not 1 <= count <= limit:
        raise LimitError(f"Count must be between 1 and {limit}, not {count}.")
    return count


def side_problem(name: str, value: int) -> str | None:
    """What is wrong with one side of an image (None if nothing): a multiple of 16 from 256 to 2048."""
    if value % SIDE_STEP or not MIN_SIDE <= value <= MAX_SIDE:
        return f"{name} {value} is not allowed: use a multiple of {SIDE_STEP} from {MIN_SIDE} to {MAX_SIDE}."
    return None


def check_size(width: int, height: int) -> tuple[int, int]:
    for name, value in (("Width", width), ("Height", height)):
        problem = side_problem(name, value)
        if problem:
            raise LimitError(problem)
    return width, height


def check_variation(strength: float, variation_seed: int | None) -> float:
    if not (isinstance(strength, (int, float)) and MIN_VARIATION <= strength <= MAX_VARIATION):
        raise LimitError(f"Variation strength must be between {MIN_VARIATION:g} and {MAX_VARIATION:g}, "
                         f"not {strength}.")
    if strength > 0 and variation_seed is None:
        raise LimitError("A variation strength above 0 needs a variation seed.")
    check_seed(variation_seed, "Variation seed")
    return float(strength)


def check_lora_strength(strength: float) -> float:
    if not (isinstance(strength, (int, float)) and math.isfinite(strength) and
            MIN_LORA_STRENGTH <= strength <= MAX_LORA_STRENGTH):
        raise LimitError(f"LoRA strength must be between {MIN_LORA_STRENGTH:g} and {MAX_LORA_STRENGTH:g}, "
                         f"not {strength}.")
    return float(strength)


def check_lora_count(count: int, max_loras: int = MAX_LORAS) -> int:
    limit = min(max_loras, MAX_LORAS)
    if count > limit:
        raise LimitError(f"A job may use at most {limit} LoRA{'s' if limit != 1 else ''}, not {count}.")
    return count


def check_denoise(strength: float) -> float:
    """The strength of an image input (img2img): 0 keeps the image, 1 ignores it."""
    if not (isinstance(strength, (int, float)) and math.isfinite(strength) and
            MIN_DENOISE <= strength <= MAX_DENOISE):
        raise LimitError(f"Image strength must be between {MIN_DENOISE:g} (keep the image) and {MAX_DENOISE:g} "
                         f"(ignore it), not {strength}.")
    return float(strength)


# ----------------------------------------------------------------------------------------------------- cost

def megapixels(width: int, height: int) -> float:
    """Pixels in MiB (2**20), so that 1024x1024 is 1.0."""
    return width * height / 2**20


def job_cost(count: int, steps: int, width: int, height: int) -> float:
    """images x steps x megapixels: about proportional to the GPU time a job takes."""
    return count * steps * megapixels(width, height)


def check_cost(count: int, steps: int, width: int, height: int, max_cost: float) -> float:
    """The job's cost, or JobTooCostly with the cost and how to lower it. `max_cost` 0 = no cap."""
    cost = job_cost(count, steps, width, height)
    if max_cost > 0 and cost > max_cost + 1e-9:
        raise JobTooCostly(
            f"This job is too large: {count} image(s) × {steps} steps × {megapixels(width, height):.3g} megapixels "
            f"= {cost:.3g}; this bot allows at most {max_cost:g} per job. Ask for fewer images, fewer steps or a "
            f"smaller size.")
    return cost
