#!/usr/bin/env bash
# The many-core measurement of issue 13 ("Prefill and decode that scale with cores"), as one
# script for a machine with many cores (docs/PERFORMANCE.md, "Not measured: 16 cores"):
#
#   cargo build --release                      # here, then carry target/release/hymba-ref there
#   bash benches/many_cores.sh OUT_DIR         # there; every figure lands in OUT_DIR, which
#                                              # must be new or empty (nothing is overwritten)
#
# What it measures, most important first, so that a run cut short still brings back the first:
#   1. decode at contexts 1024 and 4096 on every core, with --profile: % of the bandwidth roofline
#      (target ≥ 80 %), the cost at 4096 against 1024 (target ≤ 1.1×), each phase's speed-up and
#      serial share, the synchronisation, and what the machine alone gains from its cores;
#   2. prefill of 1024 tokens (and decode at 1024) at 2, 4, 8 threads and every core: the thread
#      curve (target: every core ≥ 6× the 2-thread prefill);
#   3. prefill of 512 tokens on every core, with --profile: which phase of prefill stops scaling.
# On a 16-core host it should take under 5 minutes (each of the 6 runs makes the 1.5B's random
# weights and its meta-token prefix anew; the profiled prefill runs on one thread as well).
#
# Settings (environment): BIN (the binary, default target/release/hymba-ref), THREADS (every core:
# default nproc), CONFIG (default 1.5b; `small` tries the script in seconds), LIMIT (seconds a
# run may take, default 240), BANDWIDTH_MIB (the read-bandwidth buffer, default 1024). Exits 1 if
# any run failed (the others still run).
set -u
OUT_DIR=${1:?usage: bash benches/many_cores.sh OUT_DIR}
BIN=${BIN:-target/release/hymba-ref}
THREADS=${THREADS:-$(nproc)}
CONFIG=${CONFIG:-1.5b}
LIMIT=${LIMIT:-240}
BANDWIDTH_MIB=${BANDWIDTH_MIB:-1024}
FAILED=0
if [ ! -x "$BIN" ]; then
    echo "many_cores.sh: no program at $BIN (build it with cargo build --release, or set BIN)" >&2
    exit 1
fi
# A new or empty directory, so that no earlier run's figures are overwritten.
if [ -n "$(ls -A "$OUT_DIR" 2>/dev/null)" ]; then
    echo "many_cores.sh: $OUT_DIR is not empty; give a new or empty directory (nothing was run)" >&2
    exit 1
fi
mkdir -p "$OUT_DIR" || exit 1
SUMMARY="$OUT_DIR/summary.txt"
{
    echo "# benches/many_cores.sh on $(uname -n), $(date -u +%Y-%m-%dT%H:%M:%SZ), $THREADS threads, config $CONFIG"
    lscpu 2>/dev/null | grep -E '^(Model name|CPU\(s\)|Thread\(s\) per core|Core\(s\) per socket|Socket\(s\)|L3 cache|NUMA node\(s\))'
    uptime
} > "$SUMMARY"

# bench NAME ARGS...: one run of `hymba-ref bench`, its table in NAME.txt and its progress in
# NAME.err, both appended to the summary.
bench() {
    local name=$1
    shift
    echo "== $name: hymba-ref bench $*" | tee -a "$SUMMARY"
    local start=$SECONDS
    timeout "$LIMIT" "$BIN" bench --configs "$CONFIG" "$@" > "$OUT_DIR/$name.txt" 2> "$OUT_DIR/$name.err"
    local rc=$?
    [ "$rc" -eq 0 ] || FAILED=1
    cat "$OUT_DIR/$name.err" "$OUT_DIR/$name.txt" >> "$SUMMARY"
    echo "-- $name: exit $rc after $((SECONDS - start)) s" | tee -a "$SUMMARY"
}

bench decode-profile --threads "$THREADS" --contexts 1024,4096 --synthetic-cache --runs 1 --decode-tokens 16 --profile \
    --bandwidth-mib "$BANDWIDTH_MIB"
for threads in $(printf '%s\n' 2 4 8 "$THREADS" | awk -v n="$THREADS" '$1 <= n' | sort -nu); do
    bench "prefill-$threads-threads" --threads "$threads" --contexts 1024 --runs 1 --decode-tokens 16 \
        --bandwidth-mib "$BANDWIDTH_MIB"
done
bench prefill-profile --threads "$THREADS" --contexts 512 --runs 1 --decode-tokens 4 --bandwidth-mib 0 --profile
echo "done: $SUMMARY"
exit "$FAILED"
