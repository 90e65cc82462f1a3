#!/bin/bash
# Device-side driver of bench/peer_bench.py (issue 14): install the carried wheels (diffusers, and DiffSynth 1.1.9
# with what it imports that the machine lacks: .whl-peer), show the machine, run every row on a real disk.
# Usage (as root on the GPU machine, in a checkout or a `git archive` snapshot):
#   WHEELS="../.whl ../.whl-peer" PEER_LIMIT=475 bash bench/run_peer_device.sh NAME [peer_bench args...]
# PEER_LIMIT (seconds) stops the bench in time for what it wrote to be packed and sent back.
# Writes $OUT/NAME.jsonl (rows, parity), $OUT/NAME.log (output), $OUT/NAME-rows.log (each child's log) and the
# parity images under $OUT/NAME-img/.
set -o pipefail
source bench/device_env.sh || exit 1
name=$1; shift
out=${OUT:-/tmp}
data=$PWD/.peer-data
mkdir -p "$out/$name-img"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch,diffusers,transformers;print('torch',torch.__version__,'diffusers',diffusers.__version__,'transformers',transformers.__version__)"
  nproc; free -g | head -2; df -h "$PWD" | cat
  timeout "${PEER_LIMIT:-100000}" python3 bench/peer_bench.py --all --dir "$data" --out "$out/$name.jsonl" --log "$out/$name-rows.log" \
    --save-dir "$out/$name-img" "$@"
} 2>&1 | tee "$out/$name.log"
# Few files come back from the machine: the parity files travel as one archive.
tar -czf "$out/$name-img.tgz" -C "$out" "$name-img" && rm -rf "$out/$name-img"
