#!/bin/bash
# Device-side driver: install the carried wheels, then run bench/engine_bench.py with the given arguments.
# Usage (repo root, on the GPU machine): bash bench/run_device.sh NAME [engine_bench args...]
# Writes $OUT/NAME.json (rows) and $OUT/NAME.log (full output).
set -o pipefail
source bench/device_env.sh || exit 1
name=$1; shift
out=${OUT:-/tmp}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch,diffusers,transformers;print('torch',torch.__version__,'diffusers',diffusers.__version__,'transformers',transformers.__version__)"
  python3 bench/engine_bench.py --all --out "$out/$name.json" "$@"; } 2>&1 | tee "$out/$name.log" | grep -v '%|' 
