#!/usr/bin/env bash
# Adversarial benchmark: each attack of the adversarial suite (the quiche-based attacker in
# crates/quiver-test-support/src/attacker, as the `quiver-attack` binary) runs on one core at full
# speed against `quiver serve` on loopback, pinned to another core, from 127.0.0.3. Meanwhile an
# honest client on 127.0.0.1 (a third core when there is one) opens a fresh connection and GETs
# /bytes/100 every 20 ms; an attempt fails if it has no complete answer within 5 s. Per attack: the
# honest client's success rate and p99 latency (handshake + request), and the server's peak
# resident memory (VmHWM; every attack gets a fresh server). Prints a Markdown table (SECURITY.md
# carries it).
#
#   bench/attack.sh                              # release build, 10 s per attack
#   SECONDS_PER_ATTACK=3 bench/attack.sh         # shorter runs
#   ATTACKS="none header-bomb" bench/attack.sh   # a subset
#   PROFILE=debug bench/attack.sh                # try the script on a debug build (figures not comparable)
#   SKIP_BUILD=1 bench/attack.sh                 # use the binaries already built
#
# Attacks (see SECURITY.md for the defence each meets):
#   none               the honest client alone (the baseline)
#   partial-handshakes ClientHellos that follow a Retry and then go silent, one after another
#   slow-handshakes    100 handshakes at a time, each of their datagrams held 250 ms
#   streams            20 connections, each holding every stream the server allows with a partial HEADERS frame
#   header-bomb        connection after connection, each sending a 64 KiB value, 10,000 fields or
#                      20,000 static-table references (against a 16 KiB limit)
#   tiny-data          4 connections uploading bodies as 1-byte DATA frames
#   unread             10 connections asking for every stream's worth of 1 GiB responses, never reading
#   idle               1000 idle connections kept alive with PINGs
#   idle-per-source    the same against --max-connections-per-source 100
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${PROFILE:-release}
seconds=${SECONDS_PER_ATTACK:-10}
port=${PORT:-15443}
attacks=${ATTACKS:-"none partial-handshakes slow-handshakes streams header-bomb tiny-data unread idle idle-per-source"}
server_cpu=${SERVER_CPU:-0}
attack_cpu=${ATTACK_CPU:-1}
if [ "$(nproc)" -gt 2 ]; then honest_cpu=${HONEST_CPU:-2}; else honest_cpu=${HONEST_CPU:-1}; fi
# 1000 idle connections are 1000 sockets in the attacker.
ulimit -n 4096 2>/dev/null || true

flags=(--locked -p quiver-cli -p quiver-test-support --features quiver-test-support/attacker --bin quiver --bin quiver-attack)
case ${SKIP_BUILD:+skip}$profile in
  skip*) ;;
  release) echo "building (release)..." >&2; cargo build --release "${flags[@]}" >/dev/null 2>&1 ;;
  debug) echo "building (debug)..." >&2; cargo build "${flags[@]}" >/dev/null 2>&1 ;;
  *) echo "PROFILE must be release or debug" >&2; exit 2 ;;
esac
bin=${CARGO_TARGET_DIR:-target}/$profile
addr="127.0.0.1:$port"

server=""
attacker=""
stop() {
  for pid in $attacker $server; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  server=""
  attacker=""
}
trap stop EXIT

start_server() { # FLAGS... -> sets $server
  taskset -c "$server_cpu" "$bin/quiver" serve --listen "$addr" --log warn "$@" >/dev/null 2>&1 &
  server=$!
  for _ in $(seq 100); do
    "$bin/quiver-attack" honest --server "$addr" --seconds 0.1 2>/dev/null | grep -q "succeeded=[1-9]" && return
    sleep 0.1
  done
  echo "quiver serve did not come up on $addr" >&2
  exit 1
}

field() { # LINE KEY -> value of KEY=value in LINE
  tr ' ' '\n' <<<"$1" | awk -F= -v key="$2" '$1 == key {print $2}'
}

echo "| attack | honest success % | honest p99 ms | server peak RSS MiB | what the attacker saw |"
echo "|---|---:|---:|---:|---|"
for name in $attacks; do
  attack=$name
  server_flags=()
  attack_flags=()
  case $name in
    idle) attack_flags=(--count 1000) ;;
    idle-per-source) attack=idle; attack_flags=(--count 1000); server_flags=(--max-connections-per-source 100) ;;
  esac
  start_server "${server_flags[@]}"
  log=$(mktemp)
  if [ "$attack" != none ]; then
    # The attack starts first and outlasts the measurement by a second on each side.
    taskset -c "$attack_cpu" "$bin/quiver-attack" "$attack" --server "$addr" --seconds $((seconds + 2)) \
      "${attack_flags[@]}" >"$log" 2>&1 &
    attacker=$!
    sleep 1
  fi
  honest=$(taskset -c "$honest_cpu" "$bin/quiver-attack" honest --server "$addr" --seconds "$seconds")
  if [ -n "$attacker" ]; then
    wait "$attacker" || true
    attacker=""
  fi
  rss_kb=$(awk '/VmHWM/ {print $2}' "/proc/$server/status")
  stop
  seen=$(head -c 200 "$log" | tr '\n' ' ' | sed 's/^attack=[^ ]* //; s/ *$//')
  rm -f "$log"
  printf "| %s | %s | %s | %.1f | %s |\n" "$name" "$(field "$honest" success_pct)" "$(field "$honest" p99_ms)" \
    "$(awk -v kb="$rss_kb" 'BEGIN { print kb / 1024 }')" "${seen:--}"
done
echo
echo "$(date -u +%Y-%m-%d), $(nproc) cores, ${seconds} s per attack, profile $profile; server on CPU $server_cpu, attacker on CPU $attack_cpu, honest client on CPU $honest_cpu"
