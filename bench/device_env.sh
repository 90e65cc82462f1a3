#!/bin/bash
# Sourced by the bench/run_*device.sh drivers on the GPU machine: install the carried wheels into /tmp/site and put
# it (and the checkout) on PYTHONPATH. The one place that knows how carried packages are laid out.
#   WHEELS: the folders of carried wheels (default: .whl, plus .whl-ao / .whl-peer / .whl-ray where present, here or
#           one folder up, for a `git archive` snapshot inside the checkout). A folder may also hold *.tar.xz
#           archives of an installed package tree (ray: its wheel is larger than a call may carry; the archive
#           holds it unpacked and stripped of its Java jar and dashboard build), unpacked into /tmp/site as they are.
# Usage: source bench/device_env.sh || exit 1
dirs=${WHEELS:-$(for d in .whl .whl-ao .whl-peer .whl-ray ../.whl ../.whl-ao ../.whl-peer ../.whl-ray; do
  [ -d "$d" ] && echo "$d"; done)}
wheels=$(for d in $dirs; do ls "$d"/*.whl 2>/dev/null; done | awk -F/ '!seen[$NF]++')
mkdir -p /tmp/site
[ -z "$wheels" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site $wheels || return 1
for d in $dirs; do for a in "$d"/*.tar.xz; do [ -f "$a" ] && { tar -xJf "$a" -C /tmp/site || return 1; }; done; done
export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
echo "device_env: $(echo $wheels | wc -w) wheels from: $dirs"
