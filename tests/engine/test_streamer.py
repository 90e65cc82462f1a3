"""fluxbot's block streamer on the tiny FLUX pipeline (CPU: the same code path with host "device" buffers)."""
import pytest
import torch

from engine.memory import apply_profile
from engine.precision import apply_precision
from engine.settings import EngineSettings
from engine.streamer import BlockStreamer
from engine.tiny import build_tiny_pipeline


def _image(pipe):
    return pipe("a red cat", height=64, width=64, num_inference_steps=2, max_sequence_length=32, output_type="np",
                generator=torch.Generator("cpu").manual_seed(7)).images


def _streamed_pipe(**settings):
    pipe = build_tiny_pipeline()
    apply_precision(pipe, "all-linear")
    plan = apply_profile(pipe, "streamed", "cpu", EngineSettings(profile="streamed", **settings))
    return pipe, plan


def test_streamed_image_equals_resident_image():
    ref = build_tiny_pipeline()
    apply_precision(ref, "all-linear")
    expected = _image(ref)
    pipe, plan = _streamed_pipe()
    first, second = _image(pipe), _image(pipe)   # the second run starts from the cyclic prefetch
    assert (first == expected).all() and (second == expected).all()
    dit = next(u for u in plan.streamers if u.name == "dit")
    assert dit.bytes_copied >= 2 * dit.arena.nbytes  # every block really came through the ring, every step


def test_no_block_left_on_ring_after_a_job_and_release_frees_the_ring():
    pipe, plan = _streamed_pipe()
    _image(pipe)
    dit = next(u for u in plan.streamers if u.name == "dit")
    rings = [t.data_ptr() for t in dit.ring]
    blocks = list(pipe.transformer.transformer_blocks) + list(pipe.transformer.single_transformer_blocks)
    for block in blocks:   # every weight points at the host arena, none at a ring slot
        for p in block.parameters():
            assert not any(r <= p.data_ptr() < r + dit.slot_bytes for r in rings)
    # The VAE decoded last: it holds the lease, the DiT's ring was released when it took it.
    assert dit.device_bytes() == 0
    plan.release()
    assert all(u.device_bytes() == 0 for u in plan.streamers) and plan.streamers == []
    for block in blocks:
        for h in (block._forward_pre_hooks, block._forward_hooks):
            assert len(h) == 0


def test_vram_budget_keeps_blocks_resident_and_output_unchanged():
    ref = build_tiny_pipeline()
    apply_precision(ref, "all-linear")
    expected = _image(ref)
    pipe, plan = _streamed_pipe(vram_budget_gib=1.0)   # the tiny DiT fits: nothing streams
    dit = next(u for u in plan.streamers if u.name == "dit")
    assert len(dit.resident) == 2 and dit.order == []
    assert (_image(pipe) == expected).all()


def test_aborted_run_restarts_cleanly():
    torch.manual_seed(0)
    blocks = [torch.nn.Linear(8, 8) for _ in range(4)]
    x = torch.randn(2, 8)

    def run(n):
        h = x
        for b in blocks[:n]:
            h = b(h)
        return h

    expected = run(4)
    streamer = BlockStreamer("t", blocks, "cpu", slots=2)
    run(2)                           # an aborted pass (e.g. a cancelled job) stops half way
    assert torch.equal(run(4), expected)
    assert all(p.data_ptr() != r.data_ptr() for b in blocks for p in b.parameters() for r in streamer.ring)
    streamer.close()


def test_small_consecutive_blocks_share_a_slot_and_compute_the_same():
    torch.manual_seed(0)
    blocks = [torch.nn.Linear(16, 16), torch.nn.Linear(16, 4), torch.nn.Linear(4, 16), torch.nn.Linear(16, 16)]
    x = torch.randn(3, 16)

    def run():
        h = x
        for b in blocks:
            h = b(h)
        return h

    expected = run()
    streamer = BlockStreamer("t", blocks, "cpu", slots=2)
    assert streamer.groups == [[0], [1, 2], [3]]   # the two small layers fit in one big layer's slot
    assert torch.equal(run(), expected) and torch.equal(run(), expected)
    assert streamer.bytes_copied >= 2 * streamer.arena.nbytes
    streamer.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA streams: runs on the GPU machine")
def test_a_new_ring_is_not_written_while_queued_kernels_still_use_its_memory():
    """Run 5 (H200): the mixed plans (resident DiT blocks, then streamed ones) made NaN images. The ring is
    allocated at the first streamed block, from memory an activation of the resident blocks had just freed while
    the compute stream still had kernels queued on it; the copy stream wrote the weights at once and a queued
    kernel then overwrote them. Here: a tensor of the slot's size is freed while a queued kernel fills it with
    NaN bytes (after a 0.1 s sleep on the compute stream); the block streamed next must compute with its weights."""
    dev = torch.device("cuda:0")
    torch.manual_seed(0)
    block = torch.nn.Linear(1024, 1024, bias=False)
    x = torch.randn(8, 1024, device=dev)
    expected = torch.nn.functional.linear(x, block.weight.detach().to(dev))
    unit = BlockStreamer("race", [block], dev, slots=1, cyclic=False)
    # Every kernel used below once beforehand: CUDA loads a kernel lazily at its first launch and that load may
    # synchronize the device, which would finish the sleep before the copy is issued (a first GPU run of this
    # test passed without the fix so).
    torch.cuda._sleep(1000)
    torch.empty(16, dtype=torch.uint8, device=dev).fill_(255)
    block(x)
    unit.release()
    torch.cuda.synchronize(dev)
    stale = torch.empty(unit.slot_bytes, dtype=torch.uint8, device=dev)
    where = stale.data_ptr()
    torch.cuda._sleep(200_000_000)          # the compute stream is busy for ~0.1 s...
    stale.fill_(255)                        # ...then writes 0xFF bytes (NaN as float32) into the tensor
    del stale                               # freed now: the ring's slot gets this memory
    out = block(x)
    torch.cuda.synchronize(dev)
    assert unit.ring[0].data_ptr() == where  # the slot reused the freed tensor's memory, as in run 5
    assert torch.isfinite(out).all() and torch.allclose(out, expected)
    unit.close()
