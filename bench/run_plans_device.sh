#!/bin/bash
# The streamed and budgeted plans with the engine's default recipe (issue 13's plan target), on a two-GPU machine
# (nvidia-h200-x2): GPU 0 budgets 10 then 7 GiB, GPU 1 budget 8 GiB then the bf16 working copy's drift from the
# per-step upcast (bench/step_probe.py --dit bf16-copy --batches 1 --no-graphs). Each budget in a fresh process
# (bench/engine_bench.py --fast --only row-fast-tq,streamed: the resident row, the bandwidth, then both plans).
# Usage (repo root or a snapshot of it, on the GPU machine): bash bench/run_plans_device.sh NAME
# Writes $OUT/NAME-b10.json, NAME-b7.json, NAME-b8.json, NAME-copy.jsonl and NAME-gpu0/1.log.
source bench/device_env.sh >/dev/null || exit 1
name=$1
out=${OUT:-/tmp}
plans() { timeout 230 python3 bench/engine_bench.py --fast --only row-fast-tq,streamed --budget-gib "$1" \
  --out "$out/$name-b$1.json" 2>&1 | grep -v '%|'; }
( export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=/tmp/$name-ind0; { plans 10; plans 7; } > "$out/$name-gpu0.log" ) &
( export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=/tmp/$name-ind1
  { plans 8; timeout 150 python3 bench/step_probe.py --dit bf16-copy --batches 1 --no-graphs \
      --out "$out/$name-copy.jsonl" 2>&1 | grep -v '%|'; } > "$out/$name-gpu1.log" )
wait
grep -h '"plan"' "$out/$name"-b*.json -A0 | head -0
for f in "$out/$name"-gpu0.log "$out/$name"-gpu1.log; do grep '^{' "$f" | grep -E '"plan"|h2d|bf16-copy' | cut -c1-420; done
grep -h '^{' "$out/$name-copy.jsonl" | grep bf16-copy
grep -hi "error\|traceback" "$out/$name"-gpu*.log | head -5
