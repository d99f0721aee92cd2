#!/usr/bin/env bash
# Multi-core scaling of `quiver serve`: the small-request workload (GET 100 B) against a server with N
# SO_REUSEPORT sockets (one router each) pinned to N cores, for N = 1, 2, ... up to half the machine;
# the load generator (`quiver bench -t THREADS`) gets the other half, so it is never the server's
# neighbour. Prints a Markdown table: requests/s, server CPU per request, and the speed-up over N = 1.
#
#   bench/scaling.sh            # needs at least 4 cores to show anything beyond N = 1
#   SECONDS_PER_RUN=5 bench/scaling.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p quiver-cli >/dev/null 2>&1
quiver=target/release/quiver
port=${PORT:-15533}
url="https://127.0.0.1:$port"
ticks=$(getconf CLK_TCK)
seconds=${SECONDS_PER_RUN:-10}
cores=$(nproc)
half=$((cores / 2))
[ "$half" -ge 1 ] || { echo "needs at least 2 cores" >&2; exit 1; }
client_cores="$half-$((cores - 1))"
server=""
stop() { [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null; server=""; }
trap stop EXIT

echo "Run: $(date -u +%Y-%m-%d), \`bench/scaling.sh\`, $cores cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)),"
echo "server on cores 0 to N-1 with N sockets, \`quiver bench -c $((16 * half)) -m 32 -t $half\` on cores $client_cores, ${seconds} s each."
echo
echo "| server cores = sockets | requests/s | server CPU µs per request | speed-up |"
echo "|---|---|---|---|"
base=""
for n in $(seq 1 "$half"); do
  taskset -c "0-$((n - 1))" "$quiver" serve --listen "127.0.0.1:$port" --sockets "$n" --log warn >/dev/null 2>&1 &
  server=$!
  for _ in $(seq 100); do "$quiver" get -k "$url/bytes/1" >/dev/null 2>&1 && break; sleep 0.1; done
  before=$(awk '{print $14 + $15}' "/proc/$server/stat")
  out=$(taskset -c "$client_cores" "$quiver" bench -k -c $((16 * half)) -m 32 -t "$half" -d "$seconds" "$url/bytes/100")
  after=$(awk '{print $14 + $15}' "/proc/$server/stat")
  stop
  rate=$(echo "$out" | awk '/^requests\/s:/ {print $2}')
  count=$(echo "$out" | awk '/^requests:/ {print $2}')
  per=$(awk -v t=$((after - before)) -v hz="$ticks" -v n="$count" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
  [ -n "$base" ] || base=$rate
  speedup=$(awk -v a="$rate" -v b="$base" 'BEGIN { printf "%.2fx", a / b }')
  echo "| $n | $rate | $per | $speedup |"
done
if [ "$half" -lt 2 ]; then
  echo
  echo "(With $cores cores the load generator needs the other half: only N = 1 can be measured here.)"
fi
