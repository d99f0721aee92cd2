#!/usr/bin/env bash
# UDP through a CONNECT-UDP tunnel: `quiver masque proxy` pinned to core 0, `quiver masque bench` (with
# its own UDP echo target on 127.0.0.1) pinned to core 1. Each echoed datagram crosses the proxy twice.
# Prints a Markdown table: client figures, and the proxy's CPU time read from /proc; each row is the
# median of RUNS runs (by datagrams/s), with the range. Run it on a quiet machine (uptime load < 0.5).
#
#   bench/masque-throughput.sh            # builds the release binary first; SECONDS_PER_RUN=10, RUNS=5
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p quiver-cli >/dev/null 2>&1
quiver=target/release/quiver
port=${PORT:-14950}
seconds=${SECONDS_PER_RUN:-10}
runs=${RUNS:-5}
ticks=$(getconf CLK_TCK)
out=$(mktemp)

taskset -c 0 "$quiver" masque proxy --listen "127.0.0.1:$port" --allow 127.0.0.1/32:1-65535 >"$out" 2>&1 &
proxy=$!
trap 'kill $proxy 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 100); do grep -q "masque proxy on" "$out" && break; sleep 0.1; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$proxy/stat"; }

# once ARGS...: one 10 s workload; prints "rate mbs lost late cpu_seconds per_datagram_us".
once() {
  local before after result
  before=$(cpu_ticks)
  result=$(taskset -c 1 "$quiver" masque bench --proxy "https://127.0.0.1:$port" -k --seconds "$seconds" "$@")
  after=$(cpu_ticks)
  echo "$result" | awk -v t=$((after - before)) -v hz="$ticks" '
    /datagrams\/s echoed/ {
      rate = $1; mbs = $4; gsub(/[(]/, "", $10); echoed = $10; lost = $12; late = $14
      cpu = t / hz
      per = echoed > 0 ? cpu * 1e6 / (2 * echoed) : 0
      printf "%s %s %s %s %.2f %.2f\n", rate, mbs, lost, late, cpu, per
    }'
}

# run NAME ARGS...: the workload $runs times; one table row, the median run by datagrams/s, with the
# range of datagrams/s over all runs.
run() {
  local name=$1; shift
  local results=()
  for _ in $(seq "$runs"); do results+=("$(once "$@")"); done
  printf '%s\n' "${results[@]}" | sort -n -k1,1 | awk -v name="$name" -v n="$runs" '
    { row[NR] = $0; rate[NR] = $1 }
    END {
      split(row[int((n + 1) / 2)], m, " ")
      printf "| %s | %s (%s-%s) | %s | %s | %s | %s s | %s µs |\n", name, m[1], rate[1], rate[n], m[2], m[3], m[4], m[5], m[6]
    }'
}

echo "| workload (${seconds} s each, median of ${runs}) | datagrams/s echoed (range) | MB/s each way | lost | late | proxy CPU | proxy CPU per datagram relayed |"
echo "|---|---|---|---|---|---|---|"
run "1 tunnel, 1200 B, QUIC datagrams, window 64" --size 1200 --window 64
run "8 tunnels, 1200 B, QUIC datagrams, window 32 each" --size 1200 --window 32 --tunnels 8
run "1 tunnel, 100 B, QUIC datagrams, window 64" --size 100 --window 64
run "1 tunnel, 1200 B, capsules (no QUIC datagrams), window 64" --size 1200 --window 64 --capsules
