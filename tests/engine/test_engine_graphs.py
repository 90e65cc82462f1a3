"""`[engine] cuda_graphs` in the Engine (engine/pipeline.py), on the CPU: the CPU engine records nothing and makes the
same images either way; a GraphedForward in the real pipeline (CpuRecorder in place of CUDA graphs) gives the same
images, records anew for a new LoRA set and is dropped with the placement plan and on close; the setting's config key.
GPU behaviour (the engine installs graphs only there) is the device bench's (bench/step_probe.py)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bot.config import ConfigError, load_config
from engine.cuda_graphs import GraphedForward
from engine.pipeline import Engine
from engine.spec import JobSpec, LoraUse
from engine.tiny import DEMO_LORA
from tests.conftest import with_settings
from tests.support.cpu_recorder import CpuRecorder

SPEC = JobSpec("a red cat on the moon", seed=5, steps=4, width=256, height=256)   # 4 steps: 2 eager, record, replay
DEMO = replace(SPEC, loras=(LoraUse(DEMO_LORA, 0.8),))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0]).astype(np.int16)


@pytest.fixture
def graphed_engine(tiny_settings):
    """A fresh tiny engine on the CPU whose DiT forward goes through a GraphedForward with CpuRecorder, installed
    where `Engine._use_graphs` installs it on a GPU (`engine.graphs`)."""
    engine = Engine.load(tiny_settings, "cpu")
    engine.graphs = GraphedForward(engine.pipe.transformer, recorder=CpuRecorder()).install()
    try:
        yield engine
    finally:
        engine.close()


def counts(engine) -> tuple[int, int, int]:
    s = engine.graphs.stats
    return s.eager, s.recorded, s.replays


def test_the_cpu_engine_records_no_graphs_and_makes_the_same_images_with_the_setting_off(tiny_engine, tiny_settings):
    assert tiny_engine.settings.cuda_graphs        # the default
    on = tiny_engine.generate(SPEC)
    assert tiny_engine.graphs is None and "forward" not in vars(tiny_engine.pipe.transformer)
    engine = Engine.load(with_settings(tiny_settings, cuda_graphs=False), "cpu")
    try:
        off = engine.generate(SPEC)
        assert engine.graphs is None
    finally:
        engine.close()
    assert np.array_equal(pixels(on), pixels(off))


def test_replayed_steps_give_the_same_image(graphed_engine, tiny_engine):
    got = graphed_engine.generate(SPEC)
    assert counts(graphed_engine) == (2, 1, 2)
    assert np.array_equal(pixels(got), pixels(tiny_engine.generate(SPEC)))
    again = graphed_engine.generate(replace(SPEC, seed=6))        # the next job of that size: replays only
    assert counts(graphed_engine) == (2, 1, 6)
    assert np.array_equal(pixels(again), pixels(tiny_engine.generate(replace(SPEC, seed=6))))


def test_a_lora_set_records_its_own_graph_and_its_images_are_the_loras(graphed_engine, tiny_engine):
    graphed_engine.generate(SPEC)
    assert counts(graphed_engine) == (2, 1, 2)

    demo = graphed_engine.generate(DEMO)                          # a new set: dropped, 2 eager steps, recorded anew
    assert counts(graphed_engine) == (4, 2, 4)
    assert graphed_engine.graphs.variant == demo.spec.lora_key() != ()   # the resolved set (with its hash)
    assert np.array_equal(pixels(demo), pixels(tiny_engine.generate(DEMO)))

    graphed_engine.generate(replace(DEMO, seed=9))                # the same set: its graph replays
    assert counts(graphed_engine) == (4, 2, 8)

    plain = graphed_engine.generate(SPEC)                         # back to no LoRA: recorded anew without its hooks
    assert counts(graphed_engine) == (6, 3, 10) and graphed_engine.graphs.variant == ()
    assert np.array_equal(pixels(plain), pixels(tiny_engine.generate(SPEC)))


def test_a_new_placement_plan_and_close_give_the_dit_its_own_forward_back(graphed_engine, tiny_engine):
    dit = graphed_engine.pipe.transformer
    graphed_engine.generate(SPEC)
    graphed_engine.set_profile("streamed")                        # the streamer's hooks cannot be replayed
    assert graphed_engine.graphs is None and "forward" not in vars(dit)
    streamed = graphed_engine.generate(SPEC)
    assert np.array_equal(pixels(streamed), pixels(tiny_engine.generate(SPEC)))

    graphed_engine.graphs = GraphedForward(dit, recorder=CpuRecorder()).install()
    graphed_engine.close()
    assert graphed_engine.graphs is None and "forward" not in vars(dit)


# ------------------------------------------------------------------------------------------------ the setting

def test_the_setting_reads_from_the_config_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[engine]\ncuda_graphs = false\n")
    assert load_config(path, env={}).engine.cuda_graphs is False
    path.write_text("[engine]\n")
    assert load_config(path, env={}).engine.cuda_graphs is True


def test_a_bad_value_is_refused_naming_the_key(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[engine]\ncuda_graphs = "off"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert "[engine] cuda_graphs = 'off': must be true or false" in str(e.value)
    assert str(path) in str(e.value)
