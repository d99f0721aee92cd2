#!/usr/bin/env bash
# Baseline figures for `quiver serve` alone: the three workloads of the performance issue, server pinned
# to core 0 and `quiver bench` to core 1, server CPU time read from /proc. Prints a Markdown table.
# The side-by-side run against tokio-quiche and quinn + h3 is a separate script (performance issue).
#
#   bench/quiver-baseline.sh            # builds the release binary first
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p quiver-cli >/dev/null 2>&1
quiver=target/release/quiver
port=${PORT:-14900}
url="https://127.0.0.1:$port"
ticks=$(getconf CLK_TCK)

taskset -c 0 "$quiver" serve --listen "127.0.0.1:$port" --log warn >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do "$quiver" get -k "$url/bytes/1" >/dev/null 2>&1 && break; sleep 0.1; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$server/stat"; }

# run NAME UNIT ARGS...: one workload; prints a table row with the client's figures and server CPU.
run() {
  local name=$1 unit=$2; shift 2
  local before after out
  before=$(cpu_ticks)
  out=$(taskset -c 1 "$quiver" bench -k "$@")
  after=$(cpu_ticks)
  local cpu_s count
  cpu_s=$(awk -v t=$((after - before)) -v hz="$ticks" 'BEGIN { printf "%.2f", t / hz }')
  if [ "$unit" = handshake ]; then
    count=$(echo "$out" | awk '/^handshakes:/ {print $2}')
    rate=$(echo "$out" | awk -F'[()]' '/^handshakes:/ {print $2}')
  else
    count=$(echo "$out" | awk '/^requests:/ {print $2}')
    rate="$(echo "$out" | awk '/^requests\/s:/ {print $2}') req/s, $(echo "$out" | awk '/^throughput:/ {print $2, $3}')"
  fi
  local per
  per=$(awk -v c="$cpu_s" -v n="$count" 'BEGIN { if (n > 0) printf "%.1f", c * 1e6 / n; else print "-" }')
  local latency
  latency=$(echo "$out" | awk '/^latency/ {print $4 " / " $6}')
  echo "| $name | $rate | ${latency:--} | $cpu_s s | $per µs per $unit |"
}

echo "| workload | client figures | p50 / p90 ms | server CPU | server CPU per unit |"
echo "|---|---|---|---|---|"
run "8 conns x 32 streams, GET 100 B, 10 s" request -c 8 -m 32 -d 10 "$url/bytes/100"
run "1 conn, GET 100 MiB x 5" request -c 1 -m 1 -n 5 "$url/bytes/104857600"
run "handshakes only, 8 in parallel, 5 s" handshake --hs-only -c 8 -d 5 "$url/"
