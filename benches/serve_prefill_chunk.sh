#!/usr/bin/env bash
# Long prompts among running streams, by --prefill-chunk (the demo model, 2 threads), to OUT_DIR
# (must be empty or new):
#   for each chunk size: serve the demo model; serve-load A: 8 streaming clients, 32-token prompts,
#   600 new tokens each (the running streams); 2 s later serve-load B: 4 requests one after the
#   other, 1,500-token prompts, 8 new tokens each (the long prompts). A's inter-chunk latency says
#   how long the long prompts' prefill held the streams back; B's time to first token what the
#   long prompts pay for their smaller chunks.
# Usage: benches/serve_prefill_chunk.sh OUT_DIR [CHUNK...]   (default 512 128 512 128: each twice, alternating)
set -euo pipefail
out=${1:?usage: benches/serve_prefill_chunk.sh OUT_DIR [CHUNK...]}; shift
chunks=("$@"); [ ${#chunks[@]} -gt 0 ] || chunks=(512 128 512 128)
source "$(dirname "$0")/serve_common.sh"
prepare_out "$out"
run=0
for chunk in "${chunks[@]}"; do
  run=$((run + 1)); name=run$run-chunk-$chunk
  "$bin" serve --port 0 --threads 2 --max-batch 16 --prefill-chunk "$chunk" 2> "$out/$name-server.log" & pid=$!
  addr=$(server_address "$out/$name-server.log" 100 0.2)
  [ -n "$addr" ] || { echo "error: the server did not start; see $out/$name-server.log" >&2; kill $pid; exit 1; }
  "$load" --addr "$addr" --clients 8 --requests 8 --prompt-tokens 32 --max-tokens 600 --vocab 4000 \
    --out "$out/$name-streams-requests.json" > "$out/$name-streams-summary.json" & streams=$!
  sleep 2
  "$load" --addr "$addr" --clients 1 --requests 4 --prompt-tokens 1500 --max-tokens 8 --vocab 4000 \
    --out "$out/$name-long-requests.json" > "$out/$name-long-summary.json"
  wait $streams
  kill -TERM $pid; wait $pid; echo "server exit status: $?" >> "$out/$name-server.log"
done
{ date -u; uptime; } >> "$out/machine.txt"
