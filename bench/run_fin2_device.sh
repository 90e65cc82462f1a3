#!/bin/bash
# Issue 13's follow-up run on a two-GPU machine (nvidia-h200-x2), one call:
#   GPU 0: the bf16 targets, each paired on this GPU with its anchor: diffusers' compiled bf16 weights (anchor), then
#          fluxbot bf16 compute compiled from the bf16 working copy (`--dit bf16-copy`: 20 steps with the per-step
#          upcast, then with the copy, same latents?; steps, forward kernels, CUDA graphs), then whole bf16 images
#          through the Engine (`--engine-compute bf16`: the copy kept as a GPU keeps it).
#   GPU 1: bench/engine_bench.py --fast --only …: the drift references, the default fp8 kernel's whole image with
#          the drift of its latents and decoded image (rel. L2, PSNR), then the streamed and budgeted plans with it
#          against their floors.
#   Then both GPUs: bench/multigpu_bench.py (engines in child processes, one GPU then two), if time is left.
# Usage (repo root or a snapshot of it, on the GPU machine): bash bench/run_fin2_device.sh NAME [SECONDS_FOR_MULTIGPU]
# Writes $OUT/NAME-gpu0.jsonl, NAME-gpu0.log, NAME-fast.json, NAME-gpu1.log, NAME-multigpu.json/.log.
source bench/device_env.sh >/dev/null || exit 1
name=$1
multi_s=${2:-150}
out=${OUT:-/tmp}
start=$(date +%s)
nvidia-smi --query-gpu=index,name,clocks.max.sm,power.limit --format=csv,noheader > "$out/$name-machine.log"
export TORCHINDUCTOR_CACHE_DIR=/tmp/$name-ind
( export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=/tmp/$name-ind1
  timeout 400 python3 bench/engine_bench.py --fast --out "$out/$name-fast.json" \
    --only diffusers-bf16-eager,fluxbot-bf16-eager,row-fast-tq,streamed 2>&1 | grep -v '%|' > "$out/$name-gpu1.log" ) &
( export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=/tmp/$name-ind0
  { timeout 90 python3 bench/step_probe.py --dit weights-bf16 --batches 1 --skip-drift --out "$out/$name-gpu0.jsonl"
    timeout 170 python3 bench/step_probe.py --dit bf16-copy --batches 1 --out "$out/$name-gpu0.jsonl"
    timeout 130 python3 bench/step_probe.py --engine --engine-compute bf16 --images 3 --out "$out/$name-gpu0.jsonl"
  } 2>&1 | grep -v '%|' > "$out/$name-gpu0.log" )
wait
left=$((560 - $(date +%s) + start))
echo "multigpu: $left s left, needs $multi_s"
if [ "$left" -gt "$multi_s" ]; then
  timeout $((left - 10)) python3 bench/multigpu_bench.py --jobs 16 --res 1024 --steps 20 --out "$out/$name-multigpu.json" \
    2>&1 | grep -v '%|' > "$out/$name-multigpu.log"
fi
cat "$out/$name-machine.log"
grep -h '^{' "$out/$name-gpu0.jsonl" | cut -c1-400
grep -h '^{' "$out/$name-gpu1.log" | cut -c1-400
grep -v '^{' "$out/$name-gpu1.log" | tail -5
grep -v '^{' "$out/$name-gpu0.log" | grep -i "copy\|error\|Traceback" | tail -8
tail -15 "$out/$name-multigpu.log" 2>/dev/null
