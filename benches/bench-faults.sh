#!/usr/bin/env bash
# Duplicates under faults (issue 15): the same fault mix through Petrel and through a real Postfix,
# in one run. `petrel load sink` answers 30 % of messages 451 at end of data, 5 % 554, and drops
# 5 % of connections in the middle of DATA (`--data-tempfail 0.3 --data-permfail 0.05
# --drop-in-data 0.05`). N messages (1 KiB, one recipient, null sender so bounces make no DSNs)
# from `petrel load inject` (CONNS connections), relayed by Petrel (`--relay-to`, retries after
# 200 ms to 1 s) and then by Postfix (`../shared/peers/postfix-bench.sh KEEP=1` instance,
# relayhost the sink, minimal_backoff_time 1 s). Each runs until every message is delivered or
# refused (sink unique + permanent refusals >= N) or TIMEOUT. The sink tells duplicates apart by
# each message's load id. Loopback only; every process is stopped by PID.
#
#   N=20000 benches/bench-faults.sh                 # BIN=path for another build, NO_POSTFIX=1
set -u
cd "$(dirname "$0")/.."
N=${N:-20000}; CONNS=${CONNS:-20}; TIMEOUT=${TIMEOUT:-300}
FAULTS=(--data-tempfail 0.3 --data-permfail 0.05 --drop-in-data 0.05)
PORT=${PORT:-2755}; SINK_PORT=${SINK_PORT:-2756}; PF_PORT=${PF_PORT:-2757}; SEED=${SEED:-15}
PF_BASE=${PF_BASE:-/var/tmp/petrel-faults-pf}
BIN=${BIN:-target/release/petrel}
[ -x "$BIN" ] || cargo build --locked --release --bin petrel >&2 || exit 1
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  [ -d "$PF_BASE" ] && STOP=1 BASE="$PF_BASE" ../shared/peers/postfix-bench.sh > /dev/null 2>&1
}
trap cleanup EXIT
stat() { grep -o "\"$2\": *[0-9]*" "$1" 2>/dev/null | grep -o '[0-9]*$' || echo 0; }

# run_sink STATS_FILE: the faulty sink on $SINK_PORT; sets SINK
run_sink() {
  "$BIN" load sink --listen "127.0.0.1:$SINK_PORT" --duration "$((TIMEOUT + 30))s" --seed "$SEED" \
    "${FAULTS[@]}" --stats-file "$1" > /dev/null 2>&1 &
  SINK=$!; PIDS+=("$SINK")
  for _ in $(seq 1 100); do ss -Hltn "sport = :$SINK_PORT" | grep -q . && break; sleep 0.05; done
}

# drain NAME STATS_FILE T0: waits until every message is resolved, then reports
drain() {
  local deadline=$(( $(date +%s) + TIMEOUT )) done=0
  while [ "$(date +%s)" -lt "$deadline" ]; do
    done=$(( $(stat "$2" unique_ids) + $(stat "$2" messages_permfailed) ))
    [ "$done" -ge "$N" ] && break
    sleep 0.2
  done
  sleep 3   # stragglers: a retry already on the wire
  local t1 u d p
  t1=$(date +%s.%N); u=$(stat "$2" unique_ids); d=$(stat "$2" duplicates); p=$(stat "$2" messages_permfailed)
  echo "$1: $u unique delivered, $p refused 554, resolved $((u + p))/$N in $(awk -v a="$3" -v b="$t1" 'BEGIN{printf "%.1f", b-a-3}') s; duplicates $d = $(awk -v d="$d" -v u="$u" 'BEGIN{ if(u>0) printf "%.2f", 100*d/u; else print "nan"}') % of unique"
}

echo "# $(date -u +%FT%TZ) $(nproc) cores; N=$N CONNS=$CONNS faults: ${FAULTS[*]} seed $SEED"

# --- Petrel
W=$(mktemp -d /tmp/petrel-faults.XXXXXX)
run_sink "$W/petrel-sink.json"
printf '[delivery]\nretry_initial_ms = 200\nretry_max_ms = 1000\n' > "$W/engine.toml"
"$BIN" engine --config "$W/engine.toml" --data-dir "$W/engine" --smtp-listen "127.0.0.1:$PORT" \
  --metrics-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --relay-to "127.0.0.1:$SINK_PORT" \
  --trust-network 127.0.0.0/8 > "$W/engine.out" 2> "$W/engine.err" &
ENGINE=$!; PIDS+=("$ENGINE")
for _ in $(seq 1 300); do grep -q "engine ready" "$W/engine.out" 2>/dev/null && break; sleep 0.1; done
t0=$(date +%s.%N)
timeout "$TIMEOUT" "$BIN" load inject --target "127.0.0.1:$PORT" --messages "$N" --connections "$CONNS" \
  --size 1024 --mail-from "" --json > "$W/inject.json" 2>/dev/null
drain "petrel" "$W/petrel-sink.json" "$t0"
kill "$ENGINE" "$SINK"; wait "$ENGINE" "$SINK" 2>/dev/null
[ "${KEEP:-0}" = 1 ] && echo "kept $W" || rm -rf "$W"

# --- Postfix, same sink, same faults
[ "${NO_POSTFIX:-0}" = 1 ] && exit 0
W=$(mktemp -d /tmp/petrel-faults.XXXXXX)
KEEP=1 BASE="$PF_BASE" PF_PORT="$PF_PORT" RELAY_PORT="$SINK_PORT" ../shared/peers/postfix-bench.sh > "$W/pf.out" 2>&1 \
  || { echo "postfix did not start"; cat "$W/pf.out"; exit 1; }
# The instance came with an smtp-sink on the relay port: the faulty sink replaces it.
kill "$(cat "$PF_BASE/relay_sink.pid")" 2>/dev/null; rm -f "$PF_BASE/relay_sink.pid"
for _ in $(seq 1 50); do ss -Hltn "sport = :$SINK_PORT" | grep -q . || break; sleep 0.1; done
postconf -c "$PF_BASE/etc" -e minimal_backoff_time=1s maximal_backoff_time=2s queue_run_delay=1s \
  smtp_connection_cache_on_demand=yes
postfix -c "$PF_BASE/etc" reload > /dev/null 2>&1
run_sink "$W/postfix-sink.json"
t0=$(date +%s.%N)
timeout "$TIMEOUT" "$BIN" load inject --target "127.0.0.1:$PF_PORT" --messages "$N" --connections "$CONNS" \
  --size 1024 --mail-from "" --json > "$W/inject.json" 2>/dev/null
drain "postfix $(postconf -dh mail_version)" "$W/postfix-sink.json" "$t0"
kill "$SINK"; wait "$SINK" 2>/dev/null
[ "${KEEP:-0}" = 1 ] && echo "kept $W" || rm -rf "$W"
