"""Does dynamo recompile a compiled block when one of its Linears changes class? (engine/recipe_switch.py's question.)
The tiny FLUX DiT's first double block, bf16 compute compiled (inductor) on a GPU: outputs compiled and eager, then
the Linears swapped to fp8 compute, then back, then the bf16 working copy; prints the count of compiled graphs and
which outputs are equal. Run on the GPU machine from the repo root: python3 bench/dynamo_guard_check.py
(2026-11-30, torch 2.11.0+cu130 on an H200: the swap compiled nothing new and the fp8 "compiled" output equalled the
bf16 one: docs/bench-logs/dynamo-guard.log.)"""
import sys, os, torch
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
import engine_bench as eb
from engine.precision import apply_precision
from engine.fp8_compute import UpcastLinear, Fp8Linear, swap_linears
from engine.compile import compile_blocks
from engine.streamer_flux import dit_blocks
from engine.bf16_copy import add_copy, copyable_linears, remove_copy
from torch._dynamo.utils import counters
dev = torch.device("cuda")
pipe = eb.build_pipeline(eb.TINY, dev, dit_only=True)
apply_precision(pipe, "all-linear", "bf16", hooks=False)
blocks = dit_blocks(pipe)
compile_blocks(blocks)
blk = blocks[0]
linears = [m for m in blk.modules() if isinstance(m, UpcastLinear)]
g = torch.Generator("cpu").manual_seed(0)
dim = blk.norm1.linear.in_features
hs = torch.randn(1, 64, dim, generator=g).to(dev, torch.bfloat16); es = torch.randn(1, 16, dim, generator=g).to(dev, torch.bfloat16)
temb = torch.randn(1, dim, generator=g).to(dev, torch.bfloat16)
def run():
    with torch.inference_mode():
        out = blk(hidden_states=hs, encoder_hidden_states=es, temb=temb, image_rotary_emb=None)
    return [o.float().clone() for o in out]
def eager():
    f = blk.__dict__.pop("forward"); r = run(); blk.forward = f; return r
up = run(); up_e = eager(); print("graphs after upcast", counters["stats"]["unique_graphs"])
swap_linears(linears, "fp8", "row-fast"); f8 = run(); f8_e = eager(); print("graphs after fp8 swap", counters["stats"]["unique_graphs"])
swap_linears(linears, "bf16"); back = run()
add_copy(copyable_linears(blk)); cp = run(); print("graphs after copy", counters["stats"]["unique_graphs"])
same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a, b))
print(torch.__version__, "fp8 compiled == upcast compiled:", same(f8, up), "| fp8 compiled == fp8 eager:", same(f8, f8_e),
      "| upcast compiled == eager:", same(up, up_e), "| back == up:", same(back, up), "| copy == up:", same(cp, up))
