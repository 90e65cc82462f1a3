#!/bin/bash
# Device-side driver of bench/multigpu_bench.py on a machine of two GPUs or more (issues 13 and 17): the local
# child processes (one worker, then one per GPU), then --backend ray (the local processes again, Ray with one actor,
# then one actor per GPU, and the per-job overheads), in one call.
# Usage (as root on the GPU machine, in a checkout or a `git archive` snapshot; ray carried in .whl-ray/):
#   bash bench/run_multigpu_device.sh NAME [multigpu_bench args...]
# Writes $OUT/NAME-local.{json,log} and $OUT/NAME-ray.{json,log}.
set -o pipefail
source bench/device_env.sh || exit 1
name=$1; shift
out=${OUT:-/tmp}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch,diffusers,ray;print('torch',torch.__version__,'diffusers',diffusers.__version__,'ray',ray.__version__)"
  nproc; free -g | head -2; } 2>&1 | tee "$out/$name-machine.log"
python3 bench/multigpu_bench.py --out "$out/$name-local.json" "$@" 2>&1 | tee "$out/$name-local.log" | grep -v '%|'
python3 bench/multigpu_bench.py --backend ray --out "$out/$name-ray.json" "$@" 2>&1 | tee "$out/$name-ray.log" | grep -v '%|'
