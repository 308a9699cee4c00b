#!/usr/bin/env bash
# Run one fuzz target for N seconds (default 600), nice'd, single-threaded kernels, logging to
# fuzz/logs/<target>.log. New inputs go to fuzz/corpus-work/<target> (not committed); the
# committed seeds in fuzz/corpus/<target> are read too.
set -euo pipefail
cd "$(dirname "$0")"
target=$1; secs=${2:-600}
mkdir -p "corpus-work/$target" logs
RAYON_NUM_THREADS=1 nice -n 10 cargo +nightly fuzz run -a "$target" "corpus-work/$target" "corpus/$target" -- \
  -max_total_time="$secs" -timeout=10 -print_final_stats=1 > "logs/$target.log" 2>&1
