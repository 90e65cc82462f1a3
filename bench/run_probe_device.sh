#!/bin/bash
# Issue 13's comparison on a two-GPU machine (nvidia-h200-x2), every anchor paired with a fluxbot row on its GPU:
#   GPU 0: diffusers' compiled bf16 weights (anchor), fluxbot bf16 compiled, fp8 `row-fast` and the default kernel
#          (CUDA graphs on and off, batch 1 and 4), then whole images through the Engine;
#   GPU 1: torchao + compiled blocks (anchor; ~5 min of coordinate-descent tuning), then the drift run
#          (fp8 storage's bf16-eager reference, bf16 weights, the default kernel; each in a fresh process), whose
#          default-kernel row is the same-GPU partner of torchao's.
# Usage (repo root or a snapshot of it, on the GPU machine): bash bench/run_probe_device.sh NAME
# Writes $OUT/NAME-gpu0.jsonl, NAME-gpu1.jsonl, NAME-drift.json and NAME-*.log.
source bench/device_env.sh >/dev/null || exit 1
export WHEELS=/none
name=$1
out=${OUT:-/tmp}
probe() { python3 bench/step_probe.py "$@" 2>&1 | grep -v '%|'; }
nvidia-smi --query-gpu=index,name,clocks.max.sm,power.limit --format=csv,noheader > "$out/$name-machine.log"
kernel=$(python3 -c "from engine.fp8_compute import DEFAULT_KERNEL; print(DEFAULT_KERNEL)")
( export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=/tmp/$name-ind1
  { timeout 420 python3 bench/step_probe.py --dit torchao --batches 1 --skip-drift --out "$out/$name-gpu1.jsonl" 2>&1
    timeout 200 python3 bench/engine_bench.py --fast --kernels --timeout 120 --out "$out/$name-drift.json" \
      --only fluxbot-bf16-eager,diffusers-bf16-eager,"fp8.$kernel-compile" 2>&1; } | grep -v '%|' > "$out/$name-gpu1.log" ) &
( export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=/tmp/$name-ind0
  { timeout 90 python3 bench/step_probe.py --dit weights-bf16 --batches 1 --skip-drift --out "$out/$name-gpu0.jsonl"
    timeout 120 python3 bench/step_probe.py --dit bf16 --out "$out/$name-gpu0.jsonl"
    timeout 90 python3 bench/step_probe.py --dit fp8:row-fast --batches 1 --out "$out/$name-gpu0.jsonl"
    timeout 130 python3 bench/step_probe.py --dit "fp8:$kernel" --out "$out/$name-gpu0.jsonl"
    timeout 140 python3 bench/step_probe.py --engine --out "$out/$name-gpu0.jsonl"; } 2>&1 | grep -v '%|' > "$out/$name-gpu0.log" )
wait
cat "$out/$name-machine.log"
grep -h '^{' "$out/$name-gpu0.jsonl" "$out/$name-gpu1.jsonl" | cut -c1-420
grep -v '^{' "$out/$name-gpu1.log" | tail -6
