"""Bot-side checks of /imagine options: what a user sees when a value is wrong."""
import pytest

from bot.config import Config, ConfigError, DiscordSettings, LimitsSettings
from bot.validation import InvalidRequest, parse_sizes, validate_imagine

SIZES = parse_sizes(DiscordSettings().sizes)
CFG = Config()


def test_default_sizes_are_the_documented_megapixel_choices():
    assert [(s.label, s.width, s.height) for s in SIZES] == [
        ("1:1", 1024, 1024), ("3:4", 896, 1152), ("4:3", 1152, 896), ("9:16", 768, 1344), ("16:9", 1344, 768)]
    assert SIZES[1].value == "896x1152" and SIZES[1].title == "3:4 896×1152"


def test_defaults_fill_missing_options():
    opts = validate_imagine(CFG, SIZES, prompt="  a red fox  ")
    assert (opts.prompt, opts.seed, opts.steps, opts.width, opts.height, opts.guidance, opts.count) == \
        ("a red fox", None, CFG.engine.default_steps, 1024, 1024, 3.5, 1)
    assert validate_imagine(CFG, SIZES, prompt="x", seed=-1).seed is None
    assert validate_imagine(CFG, SIZES, prompt="x", seed=0).seed == 0


@pytest.mark.parametrize("kwargs, says", [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="   "), "prompt is empty"),
    (dict(prompt="x" * 5000), "5000 characters long; the limit is 1000"),
    (dict(prompt="x", steps=0), "Steps must be between 1 and 50, not 0"),
    (dict(prompt="x", steps=999), "Steps must be between 1 and 50, not 999"),
    (dict(prompt="x", size="1000x1000"), "Size '1000x1000' is not offered"),
    (dict(prompt="x", guidance=0.5), "Guidance must be between 1 and 10"),
    (dict(prompt="x", count=5), "Count must be between 1 and 4"),
    (dict(prompt="x", seed=2**40), "out of range"),
    (dict(prompt="x", seed=-7), "out of range"),
])
def test_bad_values_are_refused_with_what_to_change(kwargs, says):
    with pytest.raises(InvalidRequest) as e:
        validate_imagine(CFG, SIZES, **kwargs)
    assert says in str(e.value)


def test_limits_come_from_the_config():
    cfg = Config(limits=LimitsSettings(max_prompt_chars=10, max_count=2))
    with pytest.raises(InvalidRequest, match="limit is 10"):
        validate_imagine(cfg, SIZES, prompt="x" * 11)
    with pytest.raises(InvalidRequest, match="between 1 and 2"):
        validate_imagine(cfg, SIZES, prompt="x", count=3)


@pytest.mark.parametrize("items, says", [
    ([], "is empty"),
    (["big"], "is not 'LABEL WIDTHxHEIGHT'"),
    (["1:1 1000x1000"], "multiple of 16"),
    (["1:1 64x64"], "from 256 to 2048"),
])
def test_bad_size_config_names_the_item(items, says):
    with pytest.raises(ConfigError, match=says):
        parse_sizes(items)


def test_size_without_label_gets_its_ratio():
    assert parse_sizes(["256x512"])[0].label == "1:2"
