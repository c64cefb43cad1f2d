#!/usr/bin/env bash
# A/B of the plain 1,000-domain relay (no control plane): `petrel engine --relay-to` a `petrel load sink`,
# N messages from `petrel load inject` (200 connections, 1,000 zipf domains, 1 KiB), the binaries given as
# arguments alternated round by round. Loopback only; every process stopped by PID.
#
#   ROUNDS=5 benches/bench-ab-relay.sh /path/to/petrel-a /path/to/petrel-b
#   DOMAINS=1 benches/bench-ab-relay.sh ...     # the 1-domain relay (default 1,000)
#
# EXTRA_A / EXTRA_B add engine flags to the first / second binary, so one binary can be compared
# with itself: EXTRA_A=--no-encryption-at-rest benches/bench-ab-relay.sh target/release/petrel{,}
#
# Both sides deliver to the same sink binary (SINK_BIN, default the last binary given). A run ends
# at the sink's last arrival (`last_arrival_unix_us` in its stats file), not when the script sees
# the file, which the sink rewrites every 200 ms; a sink without that field falls back to the
# latter (rates then fall on steps of about 0.2 s of run time).
set -u
cd "$(dirname "$0")/.."
N=${N:-100000}; ROUNDS=${ROUNDS:-3}; DOMAINS=${DOMAINS:-1000}; PORT=2735; SINK_PORT=2736
TCK=$(getconf CLK_TCK)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; }
trap cleanup EXIT
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
BINS=("$@")
SINK_BIN=${SINK_BIN:-${BINS[${#BINS[@]}-1]}}
for round in $(seq 1 "$ROUNDS"); do
  for i in "${!BINS[@]}"; do
    BIN=${BINS[$i]}
    if [ "$i" = 0 ]; then EXTRA=${EXTRA_A:-}; SIDE=A; else EXTRA=${EXTRA_B:-}; SIDE=B; fi
    DATA=$(mktemp -d /tmp/petrel-ab.XXXXXX)
    "$SINK_BIN" load sink --listen "127.0.0.1:$SINK_PORT" --duration 200s --stats-file "$DATA/stats.json" >/dev/null 2>&1 &
    SINK=$!; PIDS+=("$SINK")
    "$BIN" engine --data-dir "$DATA" --smtp-listen "127.0.0.1:$PORT" --metrics-listen 127.0.0.1:0 \
      --admin-listen 127.0.0.1:0 --relay-to "127.0.0.1:$SINK_PORT" --trust-network 127.0.0.0/8 $EXTRA \
      > "$DATA/engine.out" 2> "$DATA/engine.err" &
    ENGINE=$!; PIDS+=("$ENGINE")
    for _ in $(seq 1 300); do grep -q "engine ready" "$DATA/engine.out" 2>/dev/null && break; sleep 0.1; done
    accepted() { local v; v=$(grep -o '"messages_accepted": *[0-9]*' "$DATA/stats.json" 2>/dev/null | grep -o '[0-9]*$'); echo "${v:-0}"; }
    c0=$(cpu_ticks "$ENGINE"); t0=$(date +%s.%N)
    timeout 200 "$BIN" load inject --target "127.0.0.1:$PORT" --messages "$N" --connections 200 \
      --size 1024 --domains "$DOMAINS" --domain-weights zipf --json > /dev/null 2>&1
    deadline=$(( $(date +%s) + 200 ))
    while [ "$(accepted)" -lt "$N" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.02; done
    t2=$(date +%s.%N); c1=$(cpu_ticks "$ENGINE"); got=$(accepted)
    last=$(grep -o '"last_arrival_unix_us": *[0-9]*' "$DATA/stats.json" 2>/dev/null | grep -o '[0-9]*$')
    [ "${last:-0}" -gt 0 ] && t2=$(awk -v u="$last" 'BEGIN{printf "%.6f", u/1e6}')
    kill "$SINK" "$ENGINE"; wait "$SINK" "$ENGINE" 2>/dev/null
    rate=$(awk -v n="$got" -v a="$t0" -v b="$t2" 'BEGIN{printf "%.0f", n/(b-a)}')
    cpu=$(awk -v t="$((c1-c0))" -v k="$TCK" -v n="$got" 'BEGIN{ if(n>0) printf "%.3f", (t/k)/n*1000; else print "nan"}')
    echo "round=$round side=$SIDE bin=$BIN extra='$EXTRA': $got/$N, $rate msg/s, engine $cpu CPU s/1000 msgs"
    rm -rf "$DATA"
  done
done
