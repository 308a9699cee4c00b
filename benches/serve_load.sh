#!/usr/bin/env bash
# The load measurement of `hymba-ref serve` (issue 28), written to OUT_DIR (must be empty or new):
#   1. bench --batch-sizes 16 at context 128 on the 1.5B shape (random weights), 2 threads: the baseline
#   2. serve the same random weights (--random-weights 0, the 1.5B tokenizer), 2 threads, --max-batch 16;
#      serve-load: 16 streaming clients, 128-token prompts, 64 new tokens each
#   3. serve the demo model, --max-batch 32; serve-load: 1,000 requests at concurrency 32, every 5th bad,
#      with the server's RSS after the first 100 and at the end
# Usage: benches/serve_load.sh OUT_DIR [MODEL_1_5B_DIR]   (default ../shared/hymba/hymba-1.5b)
set -euo pipefail
out=${1:?usage: benches/serve_load.sh OUT_DIR [MODEL_1_5B_DIR]}
model=${2:-../shared/hymba/hymba-1.5b}
source "$(dirname "$0")/serve_common.sh"
prepare_out "$out"

"$bin" bench --configs 1.5b --contexts 128 --batch-sizes 16 --decode-tokens 64 --runs 1 --threads 2 --json > "$out/bench-1.5b-b16-context128.json"

serve_and_load() { # name, serve flags..., --, serve-load flags...
  local name=$1; shift
  local flags=(); while [ "$1" != -- ]; do flags+=("$1"); shift; done; shift
  "$bin" serve --port 0 "${flags[@]}" 2> "$out/$name-server.log" & local pid=$!
  local addr; addr=$(server_address "$out/$name-server.log" 600 0.5)
  [ -n "$addr" ] || { echo "error: the server did not start; see $out/$name-server.log" >&2; kill $pid; exit 1; }
  "$load" --addr "$addr" --server-pid $pid "$@" --out "$out/$name-requests.json" > "$out/$name-summary.json" || echo "serve-load reported failures" >&2
  kill -TERM $pid; wait $pid; echo "server exit status: $?" >> "$out/$name-server.log"
}

serve_and_load serve-1.5b-16-clients --model "$model" --random-weights 0 --threads 2 --max-batch 16 -- \
  --clients 16 --requests 16 --prompt-tokens 128 --max-tokens 64 --vocab 32001
serve_and_load serve-demo-1000-requests --threads 2 --max-batch 32 --max-queue 64 -- \
  --clients 32 --requests 1000 --prompt-tokens 64 --max-tokens 32 --vocab 4000 --bad-every 5
{ date -u; uptime; } >> "$out/machine.txt"
