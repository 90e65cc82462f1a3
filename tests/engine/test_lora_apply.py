"""ActiveLoras.apply builds each Linear's stacked pair without intermediate copies, and bit for bit as the plain
formula does: down matrices one above the other, each up matrix times strength × alpha/rank in bf16, side by side
(the pixels of a LoRA job must not change with how the pairs are built)."""
from __future__ import annotations

import torch

from engine.lora_apply import ActiveLoras
from engine.lora_convert import DTYPE, load_lora
from engine.tiny import build_tiny_pipeline
from tests.support import lora_layouts


def test_stacked_pairs_are_the_plain_formula_bit_for_bit_and_a_lone_lora_is_not_copied(tmp_path):
    pipe = build_tiny_pipeline()
    a = load_lora(lora_layouts.write(pipe, "kohya", tmp_path / "a.safetensors"), pipe)
    b = load_lora(lora_layouts.write(pipe, "xlabs", tmp_path / "b.safetensors"), pipe)
    active = ActiveLoras(pipe)
    for loras in ([(a, 1.0)], [(a, 0.8)], [(a, 0.7), (b, -1.3)], [(b, 2.0), (a, 0.0), (a, 0.3)]):
        active.apply(("set", tuple(s for _, s in loras)), loras, torch.device("cpu"))
        used = [(w, s) for w, s in loras if s]
        for (component, module), delta in active._deltas.items():
            pairs = [(w.pairs[component][module], s) for w, s in used if module in w.pairs.get(component, {})]
            down = torch.cat([p.down for p, _ in pairs], dim=0)
            up = torch.cat([p.up * (s * p.scale) for p, s in pairs], dim=1)
            assert delta.down.dtype == delta.up.dtype == DTYPE
            assert torch.equal(delta.down.view(torch.int16), down.view(torch.int16))
            assert torch.equal(delta.up.view(torch.int16), up.view(torch.int16))
            if len(pairs) == 1:                       # a lone LoRA's down matrix is the LoRA's own, not a copy
                assert delta.down.data_ptr() == pairs[0][0].down.data_ptr()
    # A fused layer's parts (to_q, to_k, to_v of a kohya qkv) share one down matrix: counted once.
    active.apply(("a",), [(a, 1.0)], torch.device("cpu"))
    shared = {d.down.data_ptr() for d in active._deltas.values()}
    assert len(shared) < len(active._deltas)
    assert active.nbytes < a.nbytes
    active.clear()
