#!/bin/bash
# Device-side driver of bench/plan_bench.py (issue 12): install the carried wheels, show the machine, pick a data
# folder on a real disk (not tmpfs: the disk tier and the cold-read anchor must read a disk), run every row.
# Usage (repo root, as root on the GPU machine): bash bench/run_plan_device.sh NAME [plan_bench args...]
# Writes $OUT/NAME.jsonl (rows), $OUT/NAME.log (output) and $OUT/NAME-rows.log (each child's engine log).
set -o pipefail
source bench/device_env.sh || exit 1
name=$1; shift
out=${OUT:-/tmp}
data=$PWD/.pb-data
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch,diffusers,transformers;print('torch',torch.__version__,'diffusers',diffusers.__version__,'transformers',transformers.__version__)"
  nproc; free -g | head -2; df -h "$PWD" /tmp | cat; findmnt -T "$PWD" -o TARGET,FSTYPE,SOURCE | cat
  cat /sys/fs/cgroup/cgroup.subtree_control; swapon --show | cat
  python3 bench/plan_bench.py --all --dir "$data" --out "$out/$name.jsonl" --log "$out/$name-rows.log" "$@"
} 2>&1 | tee "$out/$name.log"
