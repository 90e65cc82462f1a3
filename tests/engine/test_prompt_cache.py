"""A repeated prompt skips the text encoders (counted with forward hooks on the real encoders)."""
from __future__ import annotations

import numpy as np
import torch

from engine.pipeline import Engine
from engine.prompt_cache import PromptCache, PromptEmbeds
from engine.spec import JobSpec
from tests.conftest import with_settings

SMALL = dict(steps=1, width=256, height=256)


def count_encoder_calls(pipe) -> dict[str, int]:
    calls = {"clip": 0, "t5": 0}
    pipe.text_encoder.register_forward_hook(lambda *a: calls.__setitem__("clip", calls["clip"] + 1))
    pipe.text_encoder_2.register_forward_hook(lambda *a: calls.__setitem__("t5", calls["t5"] + 1))
    return calls


def test_second_job_with_same_prompt_does_not_run_the_encoders(tiny_settings):
    engine = Engine.load(tiny_settings, "cpu")
    try:
        calls = count_encoder_calls(engine.pipe)
        first = engine.generate(JobSpec("a blue house", seed=1, **SMALL))
        assert calls == {"clip": 1, "t5": 1}
        second = engine.generate(JobSpec("a blue house", seed=1, **SMALL))
        assert calls == {"clip": 1, "t5": 1}  # cache hit: no encoder ran
        assert np.array_equal(np.asarray(first.images[0]), np.asarray(second.images[0]))
        engine.generate(JobSpec("a green house", seed=1, **SMALL))
        assert calls == {"clip": 2, "t5": 2}
    finally:
        engine.close()


def test_cache_size_zero_encodes_every_time(tiny_settings):
    engine = Engine.load(with_settings(tiny_settings, prompt_cache_size=0), "cpu")
    try:
        calls = count_encoder_calls(engine.pipe)
        for _ in range(2):
            engine.generate(JobSpec("a blue house", seed=1, **SMALL))
        assert calls == {"clip": 2, "t5": 2}
    finally:
        engine.close()


def test_lru_evicts_the_least_recently_used_prompt():
    cache = PromptCache(2)
    encoded = []

    def encode(prompt: str) -> PromptEmbeds:
        encoded.append(prompt)
        return PromptEmbeds(torch.zeros(1, 4, 8), torch.zeros(1, 8))

    for p in ("a", "b", "a", "c", "a", "b"):
        cache.get_or_encode(p, 512, encode)
    # "b" was evicted by "c" (a was used more recently), so it is encoded again at the end
    assert encoded == ["a", "b", "c", "b"]
    assert len(cache) == 2 and cache.hits == 2
    cache.get_or_encode("a", 256, encode)  # another sequence length is another key
    assert encoded[-1] == "a"
