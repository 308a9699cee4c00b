# What the serve benchmarks (serve_load.sh, serve_prefill_chunk.sh) share; sourced, not run.
# Run from the repository root, after `cargo build --release` (nothing here builds).

bin=target/release/hymba-ref
load=target/release/serve-load

# prepare_out OUT: refuse an OUT that holds files, check the binaries are built, create OUT and
# write the machine's description (CPU, load, commit) to OUT/machine.txt.
prepare_out() {
  local out=$1
  if [ -e "$out" ] && [ -n "$(ls -A "$out")" ]; then echo "error: $out holds files; give an empty or new directory" >&2; exit 2; fi
  [ -x "$bin" ] && [ -x "$load" ] || { echo "error: build first: cargo build --release" >&2; exit 2; }
  mkdir -p "$out"
  { date -u; uname -a; grep -m1 'model name' /proc/cpuinfo; nproc; uptime; git rev-parse HEAD; } > "$out/machine.txt"
}

# server_address LOG TRIES SECONDS: the host:port a server started with `--port 0` prints to LOG,
# polled TRIES times SECONDS apart; empty if it never appeared.
server_address() {
  local log=$1 tries=$2 every=$3 addr=""
  for _ in $(seq "$tries"); do
    addr=$(grep -o 'http://127.0.0.1:[0-9]*' "$log" | head -1 | sed 's|http://||') || true
    [ -n "$addr" ] && break
    sleep "$every"
  done
  echo "$addr"
}
