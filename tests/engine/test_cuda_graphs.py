"""GraphedForward (engine/cuda_graphs.py) on the tiny FLUX DiT, on the CPU, with CpuRecorder standing in for CUDA graphs
(tests/support/cpu_recorder.py): which calls run eagerly, which record, which replay, and that every replayed step
gives the eager forward's numbers bit for bit. The real graphs are checked on a GPU by bench/step_probe.py."""
from __future__ import annotations

import logging

import pytest
import torch

from engine.cuda_graphs import GraphedForward
from tests.support.cpu_recorder import CpuRecorder

TXT_TOKENS = 8


@pytest.fixture(scope="module")
def dit(tiny_model_dir):
    """The tiny pipeline's DiT as the engine loads it (float32 on the CPU, no gradients)."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(tiny_model_dir / "transformer").eval().requires_grad_(False)


@pytest.fixture
def graphed(dit):
    """A GraphedForward on the DiT with a CPU recorder (capture after 2 eager calls, like the engine); removed after."""
    made: list[GraphedForward] = []

    def make(**options) -> GraphedForward:
        g = GraphedForward(dit, **{"recorder": CpuRecorder(), **options}).install()
        made.append(g)
        return g

    yield make
    for g in made:
        g.remove()


def step_inputs(seed: int, *, batch: int = 1, width: int = 256, height: int = 256) -> dict:
    """The keyword arguments FluxPipeline passes the DiT at one denoising step of a `width`×`height` image (random
    latents and text embeddings from `seed`, real position ids)."""
    from diffusers import FluxPipeline

    gen = torch.Generator().manual_seed(seed)
    rows, cols = height // 16, width // 16
    return dict(hidden_states=torch.randn(batch, rows * cols, 64, generator=gen),
                timestep=torch.rand(batch, generator=gen), guidance=torch.full((batch,), 3.5),
                pooled_projections=torch.randn(batch, 32, generator=gen),
                encoder_hidden_states=torch.randn(batch, TXT_TOKENS, 32, generator=gen),
                txt_ids=torch.zeros(TXT_TOKENS, 3),
                img_ids=FluxPipeline._prepare_latent_image_ids(batch, rows, cols, "cpu", torch.float32),
                joint_attention_kwargs=None, return_dict=False)


def eager(g: GraphedForward, kwargs: dict) -> torch.Tensor:
    return g.eager_forward(**kwargs)[0]


def step(dit, kwargs: dict) -> torch.Tensor:
    """One denoising step's prediction, called the way FluxPipeline calls the DiT."""
    return dit(**kwargs)[0]


def part(key: tuple, name: str):
    """What a graph's signature says of one argument: a tensor's shape, another value as it is."""
    return next(p[1] for p in key if p[0] == name)


def assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want), f"max difference {(got - want).abs().max().item()}"


# ------------------------------------------------------------------------------------------------ recording, replay

def test_two_eager_calls_then_a_recording_then_replays_with_the_eager_forwards_numbers(dit, graphed):
    g = graphed()
    outputs = []
    for seed in range(6):   # new latents and timestep every call, as in a denoising loop
        kwargs = step_inputs(seed)
        outputs.append((step(dit, kwargs), eager(g, kwargs)))
        if seed < 2:
            assert (g.stats.eager, g.stats.recorded, g.stats.replays) == (seed + 1, 0, 0)
    assert (g.stats.eager, g.stats.recorded, g.stats.replays) == (2, 1, 4)
    assert g.recorder.recordings == 1 and len(g.graphs) == 1
    for got, want in outputs:
        assert_same(got, want)


def test_an_output_handed_out_is_not_changed_by_later_replays(dit, graphed):
    g = graphed(capture_after=1)
    step(dit, step_inputs(0))
    first = step(dit, step_inputs(1))                    # recorded, then replayed
    kept = first.clone()
    later = step(dit, step_inputs(2))                    # replays into the same output buffer
    assert g.stats.replays == 2
    assert_same(first, kept)
    assert not torch.equal(first, later)


def test_each_size_and_batch_records_its_own_graph_and_at_most_max_graphs_are_kept(dit, graphed):
    g = graphed(capture_after=1, max_graphs=2)
    square, wide, pair = dict(), dict(width=512, height=256), dict(batch=2)
    calls = [square, square, wide, wide, square, pair, pair, wide, wide, square]
    for seed, shape in enumerate(calls):
        kwargs = step_inputs(seed, **shape)
        assert_same(step(dit, kwargs), eager(g, kwargs))
    # square and wide recorded; square replayed (now the most recent); pair recorded, dropping wide (the least
    # recent); wide recorded again at once (its eager call was counted), dropping square; wide replayed; square
    # recorded again, dropping pair.
    assert (g.stats.eager, g.stats.recorded, g.stats.replays) == (3, 5, 7) and g.recorder.releases == 3
    assert [part(key, "hidden_states") for key in g.graphs] == [(1, 512, 64), (1, 256, 64)]


def test_a_new_lora_set_records_anew_and_the_same_set_keeps_its_graphs(dit, graphed):
    g = graphed()
    for seed in range(3):
        step(dit, step_inputs(seed))
    assert g.stats.recorded == 1

    g.set_variant(())                                    # the same set (none): nothing dropped
    assert_same(step(dit, step_inputs(3)), eager(g, step_inputs(3)))
    assert g.stats.recorded == 1 and g.stats.replays == 2 and len(g.graphs) == 1

    lora = (("tiny-random-demo", "ab12", "/loras/tiny-random-demo.safetensors", 0.8),)
    g.set_variant(lora)                                  # a LoRA: the graph recorded without its hooks is dropped
    assert len(g.graphs) == 0 and g.recorder.releases == 1
    for seed in range(4, 7):                             # two eager calls again, then a new recording
        assert_same(step(dit, step_inputs(seed)), eager(g, step_inputs(seed)))
    assert g.stats.recorded == 2 and g.stats.eager == 4
    assert [part(key, "variant") for key in g.graphs] == [lora]


# ------------------------------------------------------------------------------------------------ what stays eager

def test_no_room_for_a_graph_keeps_that_shape_eager_and_asks_once(dit, graphed, caplog):
    asked = []

    def room_for(working: int, kwargs: dict) -> bool:
        asked.append((working, tuple(kwargs["hidden_states"].shape)))
        return kwargs["hidden_states"].shape[1] == 256   # room for 256² only

    g = graphed(room_for=room_for, recorder=CpuRecorder(working_bytes=5 * 2**30))
    with caplog.at_level(logging.INFO, logger="engine.cuda_graphs"):
        for seed in range(6):
            kwargs = step_inputs(seed, width=512, height=512)
            assert_same(step(dit, kwargs), eager(g, kwargs))
    assert asked == [(5 * 2**30, (1, 1024, 64))]          # the measured working memory, asked once
    assert g.stats.recorded == 0 and g.stats.eager == 6 and g.recorder.recordings == 0
    assert "no room for another graph (5.00 GiB of working memory)" in caplog.text

    for seed in range(3):                                 # another shape still records where there is room
        step(dit, step_inputs(seed))
    assert g.stats.recorded == 1


def test_a_recording_that_fails_is_logged_and_that_shape_runs_eagerly(dit, graphed, caplog):
    g = graphed(recorder=CpuRecorder(fail=RuntimeError("operation not permitted when stream is capturing")))
    with caplog.at_level(logging.WARNING, logger="engine.cuda_graphs"):
        for seed in range(6):
            kwargs = step_inputs(seed)
            assert_same(step(dit, kwargs), eager(g, kwargs))
    assert g.recorder.recordings == 1 and g.stats.recorded == 0 and g.stats.eager == 6
    assert g.stats.failed == ["RuntimeError: operation not permitted when stream is capturing"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "recording the DiT's forward failed (RuntimeError: operation not permitted" in warnings[0].getMessage()


@pytest.mark.parametrize("how", ["positional", "dict result", "attention kwargs"])
def test_calls_that_cannot_be_recorded_run_eagerly(dit, graphed, how):
    g = graphed(capture_after=1)
    for seed in range(4):
        kwargs = step_inputs(seed)
        want = eager(g, kwargs)
        if how == "positional":
            hidden = kwargs.pop("hidden_states")
            got = dit(hidden, **kwargs)[0]
        elif how == "dict result":
            got = dit(**{**kwargs, "return_dict": True}).sample
        else:   # an IP-adapter's embeddings travel this way; a LoRA scale too
            got = dit(**{**kwargs, "joint_attention_kwargs": {"scale": 1.0}})[0]
        assert_same(got, want)
    assert g.recorder.recordings == 0 and g.stats.recorded == 0 and g.stats.eager == 4


def test_the_cuda_recorder_leaves_cpu_calls_eager(dit):
    g = GraphedForward(dit, capture_after=1).install()   # the engine's default recorder
    try:
        for seed in range(4):
            kwargs = step_inputs(seed)
            assert_same(step(dit, kwargs), eager(g, kwargs))
        assert g.stats.eager == 4 and g.stats.recorded == 0 and not g.graphs
    finally:
        g.remove()


def test_remove_gives_the_module_its_own_forward_back(dit, graphed):
    g = graphed(capture_after=0)
    step(dit, step_inputs(0))
    assert dit.forward is g and len(g.graphs) == 1
    g.remove()
    assert "forward" not in vars(dit) and dit.forward == g.eager_forward and not g.graphs
    kwargs = step_inputs(1)
    assert_same(step(dit, kwargs), eager(g, kwargs))
    assert g.stats.replays == 1 and g.stats.eager == 0   # the call went to the module, not through g
