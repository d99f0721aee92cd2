#!/usr/bin/env bash
# The cost of observability on small requests: `quiver serve` with metrics and INFO tracing on (access
# log written to a file, Prometheus endpoint scraped after each run) against both off (`--log warn`, no
# --metrics), in alternating runs. Server pinned to core 0, `quiver bench` to core 1; server CPU time
# (utime + stime from /proc/PID/stat) per request. Prints a Markdown table and the medians.
#
#   bench/observability-overhead.sh [ROUNDS] [SECONDS]     # default 3 rounds of 10 s per mode
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-10}
cargo build --release --locked -p quiver-cli >/dev/null 2>&1
quiver=target/release/quiver
ticks=$(getconf CLK_TCK)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# run MODE: starts a server in MODE (on|off), loads it, prints "µs-per-request requests/s".
run() {
  local mode=$1 port=$((14950 + RANDOM % 1000)) args=(--log warn)
  [ "$mode" = on ] && args=(--log info --metrics 127.0.0.1:0)
  taskset -c 0 "$quiver" serve --listen "127.0.0.1:$port" "${args[@]}" >"$work/stdout" 2>"$work/access.log" &
  local server=$!
  for _ in $(seq 100); do "$quiver" get -k "https://127.0.0.1:$port/bytes/1" >/dev/null 2>&1 && break; sleep 0.1; done
  local before after out
  before=$(awk '{print $14 + $15}' "/proc/$server/stat")
  out=$(taskset -c 1 "$quiver" bench -k -c 8 -m 32 -d "$seconds" "https://127.0.0.1:$port/bytes/100")
  after=$(awk '{print $14 + $15}' "/proc/$server/stat")
  local scraped=""
  if [ "$mode" = on ]; then
    scraped=$(curl -sf "$(grep -o 'http://[0-9.:]*/metrics' "$work/stdout")" || true)
  fi
  # Stopped before any check: this function runs in a subshell, whose exit would leave it running.
  kill "$server"; wait "$server" 2>/dev/null || true
  if [ "$mode" = on ] && ! grep -q '^quiver_http_requests_total{status="200"}' <<<"$scraped"; then
    echo "no request metrics in the scrape" >&2
    exit 1
  fi
  local count rate
  count=$(echo "$out" | awk '/^requests:/ {print $2}')
  rate=$(echo "$out" | awk '/^requests\/s:/ {print $2}')
  awk -v t=$((after - before)) -v hz="$ticks" -v n="$count" -v r="$rate" 'BEGIN { printf "%.2f %s\n", t / hz * 1e6 / n, r }'
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "| round | off: µs/request (req/s) | on: µs/request (req/s) |"
echo "|---|---|---|"
: >"$work/off"; : >"$work/on"
for round in $(seq "$rounds"); do
  read -r off_us off_rate < <(run off)
  read -r on_us on_rate < <(run on)
  echo "$off_us" >>"$work/off"; echo "$on_us" >>"$work/on"
  echo "| $round | $off_us ($off_rate) | $on_us ($on_rate) |"
done
off=$(median <"$work/off"); on=$(median <"$work/on")
awk -v off="$off" -v on="$on" 'BEGIN { printf "\nmedian: off %.2f µs, on %.2f µs per request: %+.1f %%\n", off, on, (on - off) / off * 100 }'
