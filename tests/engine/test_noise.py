"""Variation seeds: slerp of two seeds' noise; strength 0 is the parent, 1 is the variation seed's image."""
from __future__ import annotations

import numpy as np
import torch

from engine.noise import initial_latents, packed_shape, seed_noise, slerp
from engine.spec import JobSpec

SMALL = dict(steps=2, width=256, height=256)


def px(result) -> np.ndarray:
    return np.asarray(result.images[0]).astype(np.int16)


def test_noise_is_packed_float32_and_seeded():
    a = seed_noise(5, 1024, 768)
    assert a.shape == (1, *packed_shape(1024, 768)) == (1, 64 * 48, 64) and a.dtype == torch.float32
    assert torch.equal(a, seed_noise(5, 1024, 768)) and not torch.equal(a, seed_noise(6, 1024, 768))


def test_slerp_ends_and_norm():
    a, b = seed_noise(1, 256, 256), seed_noise(2, 256, 256)
    assert slerp(a, b, 0.0) is a and torch.equal(slerp(a, b, 1.0), b)
    mid = slerp(a, b, 0.5)
    # unlike a straight average, slerp keeps the noise at unit variance
    assert abs(mid.std().item() - 1.0) < 0.05 and abs(((a + b) / 2).std().item() - 0.707) < 0.05
    assert torch.equal(initial_latents(1, 256, 256, variation_seed=2, variation_strength=0.0), a)


def test_variation_strength_zero_reproduces_the_parent(tiny_engine):
    parent = tiny_engine.generate(JobSpec("a forest", seed=21, **SMALL))
    same = tiny_engine.generate(JobSpec("a forest", seed=21, variation_seed=99, variation_strength=0.0, **SMALL))
    assert np.array_equal(px(parent), px(same))


def test_variation_moves_towards_the_variation_seed(tiny_engine):
    parent = px(tiny_engine.generate(JobSpec("a forest", seed=21, **SMALL)))
    other = px(tiny_engine.generate(JobSpec("a forest", seed=99, **SMALL)))
    full = px(tiny_engine.generate(JobSpec("a forest", seed=21, variation_seed=99, variation_strength=1.0, **SMALL)))
    some = px(tiny_engine.generate(JobSpec("a forest", seed=21, variation_seed=99, variation_strength=0.3, **SMALL)))
    assert np.array_equal(full, other)
    d_parent, d_other = np.abs(some - parent).mean(), np.abs(some - other).mean()
    assert 0 < d_parent < d_other
