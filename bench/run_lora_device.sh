#!/bin/bash
# Device-side driver of bench/lora_bench.py (issue 15): install the carried wheels, show the machine, write the model
# and LoRA files on a real disk (not tmpfs), run the rows (each in a child process, RAM caps as cgroups).
# Usage (as root on the GPU machine, in a checkout or a `git archive` snapshot):
#   LORA_LIMIT=560 bash bench/run_lora_device.sh NAME [lora_bench args...]
# LORA_LIMIT (seconds) stops the bench in time for what it wrote to come back.
# Writes $OUT/NAME.jsonl (rows), $OUT/NAME.log (output) and $OUT/NAME-rows.log (each child's engine log).
set -o pipefail
source bench/device_env.sh || exit 1
name=$1; shift
out=${OUT:-/tmp}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch,diffusers;print('torch',torch.__version__,'diffusers',diffusers.__version__)"
  nproc; free -g | head -2
  timeout "${LORA_LIMIT:-100000}" python3 bench/lora_bench.py --dir "$PWD/.pb-data" --out "$out/$name.jsonl" \
    --log "$out/$name-rows.log" "$@"
} 2>&1 | tee "$out/$name.log" | grep -v '%|'
