"""engine/limits.py: the one set of limits and checks that the bot, the CLI and the engine share."""
import pytest

from engine import limits
from engine.limits import JobTooCostly, LimitError, PromptEmpty, PromptTooLong

INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u3164", "\u115f", "\uffa0", "\u2800",
             "\U000e0001", "\U000e0041", "\U000e007f", "\ufe0f", "\ufe00", "\U000e0100", "\u034f", "\u180e",
             "\u3000", "\u00a0"]


@pytest.mark.parametrize("ch", INVISIBLE, ids=[f"U+{ord(c):04X}" for c in INVISIBLE])
def test_a_prompt_of_characters_that_render_as_nothing_is_empty(ch):
    with pytest.raises(PromptEmpty, match="The prompt is empty"):
        limits.check_prompt(ch * 3 + " " + ch)


@pytest.mark.parametrize("prompt", [
    "👨‍👩‍👧 a family",                                  # ZWJ inside an emoji sequence
    "a flag 🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",  # tag sequence at the end
    "a red ❤️", "a key ⌨︎",                              # variation selectors after their emoji
    "한국어 프롬프트",
])
def test_emoji_sequences_and_scripts_pass_unchanged(prompt):
    assert limits.check_prompt(prompt) == prompt


def test_invisible_fillers_are_trimmed_from_the_ends_only():
    assert limits.check_prompt("\u200b\u2800 a\u200bfox \u3164") == "a\u200bfox"


def test_prompt_length_uses_the_given_limit_and_the_one_wording():
    with pytest.raises(PromptTooLong, match="The prompt is 11 characters long; the limit is 10. Shorten it."):
        limits.check_prompt("x" * 11, 10)


def test_seed_out_of_range_is_refused_not_wrapped():
    assert limits.check_seed(-1) is None and limits.check_seed(None) is None
    assert limits.check_seed(limits.MAX_SEED) == limits.MAX_SEED
    for bad in (limits.MAX_SEED + 1, -2):
        with pytest.raises(LimitError, match="out of range: use 0 to 4294967295, or -1"):
            limits.check_seed(bad)


def test_job_cost_is_images_times_steps_times_megapixels():
    assert limits.job_cost(4, 50, 1024, 1024) == 200
    assert limits.job_cost(1, 20, 2048, 2048) == 80


def test_default_cost_cap_allows_every_default_size_at_the_largest_steps_and_count():
    from bot.config import DiscordSettings, LimitsSettings
    from bot.validation import parse_sizes

    cap = LimitsSettings().max_job_cost
    for size in parse_sizes(DiscordSettings().sizes):
        limits.check_cost(limits.MAX_COUNT, limits.MAX_STEPS, size.width, size.height, cap)
    with pytest.raises(JobTooCostly) as err:
        limits.check_cost(4, 50, 2048, 2048, cap)
    assert "= 800; this bot allows at most 200 per job. Ask for fewer images, fewer steps or a smaller size" \
        in str(err.value)
    assert limits.check_cost(4, 50, 2048, 2048, 0) == 800  # 0 = no cap


def test_the_engine_refuses_with_the_same_words():
    from engine.errors import EngineError
    from engine.pipeline import check_spec
    from engine.spec import JobSpec

    with pytest.raises(EngineError, match="Steps must be between 1 and 50, not 60"):
        check_spec(JobSpec("a cat", seed=1, steps=60))
    with pytest.raises(EngineError, match="The prompt is empty"):
        check_spec(JobSpec("\u2800\u3164", seed=1))
    with pytest.raises(EngineError, match="Width 1000 is not allowed: use a multiple of 16 from 256 to 2048"):
        check_spec(JobSpec("a cat", seed=1, width=1000))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), 0.5, 10.5, "3"])
def test_guidance_that_is_not_a_finite_number_in_range_is_refused(bad):
    with pytest.raises(LimitError, match="Guidance must be between 1 and 10"):
        limits.check_guidance(bad)
