#!/usr/bin/env bash
# Instructions per small request, user space only: `quiver serve` under callgrind, loaded by
# `quiver bench -c 8 -m 32 -n REQUESTS` (GET 100 B). Deterministic enough to compare two builds on a
# busy machine, where CPU time is not. Needs valgrind (`apt-get install valgrind`).
#
#   bench/callgrind.sh [REQUESTS]      # default 20000; the profile stays in target/callgrind.out
#   callgrind_annotate --inclusive=yes target/callgrind.out | less
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-20000}
port=${PORT:-15633}
cargo build --release --locked -p quiver-cli >/dev/null 2>&1
quiver=target/release/quiver
out=target/callgrind.out
valgrind --tool=callgrind --callgrind-out-file="$out" "$quiver" serve --listen "127.0.0.1:$port" --log warn --sockets 1 \
  >/dev/null 2>&1 &
server=$!
trap 'kill -INT $server 2>/dev/null || true' EXIT
for _ in $(seq 300); do "$quiver" get -k "https://127.0.0.1:$port/bytes/1" >/dev/null 2>&1 && break; sleep 0.2; done
"$quiver" bench -k -c 8 -m 32 -n "$requests" "https://127.0.0.1:$port/bytes/100" | grep -E "^requests"
kill -INT "$server"
wait "$server" 2>/dev/null || true
trap - EXIT
awk -v n="$requests" '/^summary:/ { printf "instructions: %d in total, %.0f per request (startup included)\n", $2, $2 / n }' "$out"
