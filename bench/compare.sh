#!/usr/bin/env bash
# Side-by-side benchmark: the same workloads against `quiver serve`, a tokio-quiche 0.20 server and a
# quinn 0.11 + h3 server (bench/servers), all answering GET /bytes/N with N bytes. Each server runs
# pinned to core 0, the load generator (`quiver bench`) to core 1; server CPU time is read from
# /proc/PID/stat, receive-buffer drops from /proc/net/udp (the server's socket) and /proc/net/snmp.
#
#   bench/compare.sh                 # prints the Markdown report
#   bench/compare.sh --write         # and replaces the side-by-side section of BENCHMARKS.md
#   QUICK=1 bench/compare.sh         # shorter runs, for trying the script out
#
# Workloads (the performance issue's): 8 connections x 32 streams of GET 100 B; one connection
# downloading 1 GiB; full handshakes only (no session resumption), 8 in parallel; 10k idle connections
# (server memory).
set -euo pipefail
cd "$(dirname "$0")/.."
write=false
[ "${1:-}" = "--write" ] && write=true

small_seconds=10; bulk_bytes=1073741824; hs_seconds=5; idle_connections=10000; rounds=3
if [ -n "${QUICK:-}" ]; then small_seconds=3; bulk_bytes=104857600; hs_seconds=2; idle_connections=2000; rounds=1; fi

echo "building (release)..." >&2
cargo build --release --locked -p quiver-cli -p quiver-bench-servers >/dev/null 2>&1
bin=target/release
port=${PORT:-15433}
url="https://127.0.0.1:$port"
ticks=$(getconf CLK_TCK)
server=""

start_server() { # NAME -> sets $server
  case $1 in
    quiver) taskset -c 0 "$bin/quiver" serve --listen "127.0.0.1:$port" --log warn >/dev/null 2>&1 & ;;
    tokio-quiche) taskset -c 0 "$bin/tokio-quiche-server" "127.0.0.1:$port" >/dev/null 2>&1 & ;;
    quinn-h3) taskset -c 0 "$bin/quinn-h3-server" "127.0.0.1:$port" >/dev/null 2>&1 & ;;
  esac
  server=$!
  for _ in $(seq 100); do "$bin/quiver" get -k "$url/bytes/1" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "server $1 did not come up" >&2; exit 1
}
stop_server() {
  [ -n "$server" ] || return 0
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  server=""
}
trap stop_server EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$server/stat"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$server/status"; }
# Drops on the server's UDP socket(s): the last column of /proc/net/udp for the local port.
socket_drops() {
  local hex; hex=$(printf '%04X' "$port")
  awk -v p=":$hex" '$2 ~ p"$" {sum += $NF} END {print sum + 0}' /proc/net/udp
}
rcvbuf_errors() { awk '/^Udp: [0-9]/ {print $6}' /proc/net/snmp; }

bench() { taskset -c 1 "$bin/quiver" bench -k "$@"; }

# measure NAME WORKLOAD -> prints "value|cpu_us_per_unit|extra"
measure() {
  local name=$1 workload=$2 out before after d0 d1 r0 r1
  start_server "$name"
  before=$(cpu_ticks); d0=$(socket_drops); r0=$(rcvbuf_errors)
  case $workload in
    small) out=$(bench -c 8 -m 32 -d "$small_seconds" "$url/bytes/100") ;;
    bulk) out=$(bench -c 1 -m 1 -n 1 "$url/bytes/$bulk_bytes") ;;
    handshakes) out=$(bench --hs-only -c 8 -d "$hs_seconds" "$url/") ;;
    idle)
      local rss0 rss1 log; rss0=$(rss_kb); log=$(mktemp)
      bench -c "$idle_connections" --hold 6 "$url/" >"$log" 2>&1 &
      local holder=$!
      for _ in $(seq 600); do grep -q "open in" "$log" && break; sleep 0.1; done
      sleep 2; rss1=$(rss_kb)
      wait "$holder" || true; rm -f "$log"
      stop_server
      awk -v a="$rss0" -v b="$rss1" -v n="$idle_connections" 'BEGIN { printf "%.1f|-|%d kB before, %d kB with %d\n", (b - a) / n, a, b, n }'
      return ;;
  esac
  after=$(cpu_ticks); d1=$(socket_drops); r1=$(rcvbuf_errors)
  stop_server
  local cpu_s count rate
  cpu_s=$(awk -v t=$((after - before)) -v hz="$ticks" 'BEGIN { printf "%.3f", t / hz }')
  case $workload in
    small) count=$(echo "$out" | awk '/^requests:/ {print $2}'); rate=$(echo "$out" | awk '/^requests\/s:/ {print $2}') ;;
    bulk) count=1; rate=$(echo "$out" | awk '/^throughput:/ {print $2}') ;;
    handshakes) count=$(echo "$out" | awk '/^handshakes:/ {print $2}'); rate=$(echo "$out" | awk -F'[()]' '/^handshakes:/ {split($2, a, " "); print a[1]}') ;;
  esac
  local per
  per=$(awk -v c="$cpu_s" -v n="$count" 'BEGIN { if (n > 0) printf "%.1f", c * 1e6 / n; else print "-" }')
  if [ "$workload" = bulk ]; then per=$(awk -v c="$cpu_s" -v b="$bulk_bytes" 'BEGIN { printf "%.2f", c * 1e9 / b }'); fi
  echo "$rate|$per|drops $((d1 - d0)) socket, $((r1 - r0)) rcvbuf"
}

# best of N rounds (highest rate; for idle memory, lowest per connection)
best() {
  local name=$1 workload=$2 best_line="" line value best_value=""
  for _ in $(seq "$rounds"); do
    line=$(measure "$name" "$workload")
    value=${line%%|*}
    if [ -z "$best_value" ] || { [ "$workload" = idle ] && awk -v a="$value" -v b="$best_value" 'BEGIN{exit !(a < b)}'; } \
      || { [ "$workload" != idle ] && awk -v a="$value" -v b="$best_value" 'BEGIN{exit !(a > b)}'; }; then
      best_value=$value; best_line=$line
    fi
  done
  echo "$best_line"
}

servers=(quiver tokio-quiche quinn-h3)
declare -A results
for workload in small bulk handshakes idle; do
  for name in "${servers[@]}"; do
    echo "$workload: $name..." >&2
    results[$name,$workload]=$(best "$name" "$workload")
  done
done

field() { echo "${results[$1,$2]}" | cut -d'|' -f"$3"; }
ratio() { awk -v a="$(field quiver "$1" 1)" -v b="$(field tokio-quiche "$1" 1)" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }

report() {
  echo "Run: $(date -u +%Y-%m-%d), \`bench/compare.sh\` (best of $rounds rounds per cell). Machine: $(nproc) cores,"
  echo "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), Linux $(uname -r). Server pinned to core 0 (\`taskset -c 0\`),"
  echo "\`quiver bench\` to core 1; loopback; key exchange X25519 (the load generator offers only it)."
  echo
  echo "| workload | unit | quiver | tokio-quiche 0.20 | quinn 0.11 + h3 0.0.8 | quiver vs tokio-quiche |"
  echo "|---|---|---|---|---|---|"
  echo "| 8 conns x 32 streams, GET 100 B, ${small_seconds} s | requests/s | $(field quiver small 1) | $(field tokio-quiche small 1) | $(field quinn-h3 small 1) | $(ratio small) |"
  echo "| same | server CPU µs per request | $(field quiver small 2) | $(field tokio-quiche small 2) | $(field quinn-h3 small 2) | |"
  echo "| 1 conn, GET $((bulk_bytes / 1048576)) MiB | MB/s | $(field quiver bulk 1) | $(field tokio-quiche bulk 1) | $(field quinn-h3 bulk 1) | $(ratio bulk) |"
  echo "| same | server CPU s per GB | $(field quiver bulk 2) | $(field tokio-quiche bulk 2) | $(field quinn-h3 bulk 2) | |"
  echo "| same | UDP receive drops | $(field quiver bulk 3) | $(field tokio-quiche bulk 3) | $(field quinn-h3 bulk 3) | |"
  echo "| full handshakes only, 8 in parallel, ${hs_seconds} s | handshakes/s | $(field quiver handshakes 1) | $(field tokio-quiche handshakes 1) | $(field quinn-h3 handshakes 1) | $(ratio handshakes) |"
  echo "| same | server CPU µs per handshake | $(field quiver handshakes 2) | $(field tokio-quiche handshakes 2) | $(field quinn-h3 handshakes 2) | |"
  echo "| ${idle_connections} idle connections | server RSS KiB per connection | $(field quiver idle 1) | $(field tokio-quiche idle 1) | $(field quinn-h3 idle 1) | |"
}

text=$(report)
echo "$text"
if $write; then
  python3 - "$text" <<'PY'
import sys, re
text = sys.argv[1]
path = "BENCHMARKS.md"
doc = open(path).read()
begin, end = "<!-- compare:begin -->", "<!-- compare:end -->"
block = begin + "\n" + text + "\n" + end
if begin in doc and end in doc:
    doc = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
else:
    doc += "\n## Side by side\n\n" + block + "\n"
open(path, "w").write(doc)
PY
  echo "BENCHMARKS.md updated" >&2
fi
