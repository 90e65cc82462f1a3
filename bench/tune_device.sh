#!/bin/bash
# Device-side: streamed DiT step time for several prefetch depths (FLUXBOT_BENCH_PREFETCH), same machine.
set -o pipefail
out=${OUT:-/tmp}
for k in "$@"; do
  FLUXBOT_BENCH_PREFETCH=$k bash bench/run_device.sh "prefetch$k" --only dit:fluxbot-streamed --timeout 200 | grep '^{'
done
