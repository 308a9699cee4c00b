#!/bin/bash
cd /work/main
out=$1; rm -rf $out; mkdir -p $out
bin=target/release/hymba-ref
$bin serve --port 0 --model ../shared/hymba/hymba-1.5b --random-weights 0 --threads 2 --max-batch 16 2> $out/server.log & pid=$!
addr=""
for i in $(seq 600); do addr=$(grep -o 'http://127.0.0.1:[0-9]*' $out/server.log | head -1 | sed 's|http://||') || true; [ -n "$addr" ] && break; sleep 0.5; done
target/release/serve-load --addr "$addr" --server-pid $pid --clients 16 --requests 16 --prompt-tokens 128 --max-tokens 64 --vocab 32001 --out $out/req.json > $out/summary.json
kill -TERM $pid; wait $pid
python3 -c "
import json;d=json.load(open('$out/summary.json'));print(d['all_clients_streaming_window'], d['aggregate_tokens_per_second'], d['ttft_ms'], d['inter_chunk_ms'])"
uptime
