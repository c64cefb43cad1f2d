#!/usr/bin/env bash
# Queue memory (issue 17): N queued recipients over DOMAINS domains, live and after a restart.
#
#   benches/bench-queue-memory.sh                 # N=1000000 DOMAINS=100000 SIZE=512
#   BIN=/tmp/petrel-old benches/bench-queue-memory.sh
#
# The engine relays to `petrel load sink --rcpt-tempfail <suffix>=1`, so every first attempt is
# deferred (450 at RCPT) and stays queued for an hour (retry_initial_ms). Once the queue holds
# all N and the deferrals are done, it reads the engine's RSS and its own accounting
# (`petrel_queue_memory_bytes`, `petrel_spool_index_memory_bytes`). Then the engine is killed
# with SIGKILL and started again on the same data: time until it answers SMTP, time until every
# recipient is queued again, and RSS and accounting 3 and 15 seconds later (recovery's transient
# memory goes back to the system within about ten seconds). Loopback only; every process
# stopped by PID; every wait bounded.
set -u
cd "$(dirname "$0")/.."
N=${N:-1000000}; DOMAINS=${DOMAINS:-100000}; SIZE=${SIZE:-512}; CONNS=${CONNS:-100}
PORT=${PORT:-2745}; SINK_PORT=${SINK_PORT:-2746}; TIMEOUT=${TIMEOUT:-600}
BIN=${BIN:-target/release/petrel}
[ -x "$BIN" ] || cargo build --locked --release --bin petrel >&2 || exit 1
SUFFIX=qm.test
PIDS=()
DATA=$(mktemp -d /var/tmp/petrel-qmem.XXXXXX)
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; [ "${KEEP:-0}" = 1 ] || rm -rf "$DATA"; }
trap cleanup EXIT
rss_mib() { awk '/^VmRSS/{printf "%.1f", $2/1024}' "/proc/$1/status" 2>/dev/null; }
metric_sum() { curl -s "http://$MET/metrics" | awk -v m="$1" '$1 ~ "^"m"(\\{|$)" {s+=$2} END{printf "%.0f", s}'; }
now() { date +%s.%N; }

cat > "$DATA/engine.toml" <<EOF
[delivery]
relay_to = "127.0.0.1:$SINK_PORT"
retry_initial_ms = 3600000
retry_max_ms = 3600000
[limits]
queued_recipients_max = $((N * 2))
EOF

start_engine() {
  "$BIN" engine --config "$DATA/engine.toml" --data-dir "$DATA/spool" --smtp-listen "127.0.0.1:$PORT" \
    --metrics-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --trust-network 127.0.0.0/8 \
    > "$DATA/engine.out" 2> "$DATA/engine.err" &
  ENGINE=$!; PIDS+=("$ENGINE")
}
wait_ready() {
  for _ in $(seq 1 600); do grep -q "engine ready" "$DATA/engine.out" 2>/dev/null && break; sleep 0.01; done
  MET=$(grep -o 'metrics: http://[0-9.:]*' "$DATA/engine.out" 2>/dev/null | head -1 | sed 's|.*http://||')
}
wait_depth() { # until petrel_queue_depth reaches $1, bounded by TIMEOUT
  local deadline=$(( $(date +%s) + TIMEOUT ))
  while [ "$(metric_sum petrel_queue_depth)" -lt "$1" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.05; done
}
wait_settled() { # until every recipient has had its first attempt and the engine idles
  local deadline=$(( $(date +%s) + TIMEOUT ))
  while [ "$(metric_sum petrel_delivery_deferred_total)" -lt "$N" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.5; done
  sleep 3
}
report() { # label
  local rss q s d
  rss=$(rss_mib "$ENGINE"); q=$(metric_sum petrel_queue_memory_bytes); s=$(metric_sum petrel_spool_index_memory_bytes)
  d=$(metric_sum petrel_queue_depth)
  local parts
  parts=$(curl -s "http://$MET/metrics" | awk -v d="$d" '/^petrel_queue_memory_bytes\{/ { match($0, /part="[a-z]+"/); p=substr($0, RSTART+6, RLENGTH-7); s[p]+=$NF }
    END { for (p in s) printf "%s %.0f, ", p, (d>0 ? s[p]/d : 0) }')
  echo "$1 parts (B/rcpt): $parts"
  echo "$1: queued $d, RSS $rss MiB ($(awk -v r="$rss" -v d="$d" 'BEGIN{ if(d>0) printf "%.0f", r*1048576/d}') B per recipient), accounting: queues $q B ($(awk -v q="$q" -v d="$d" 'BEGIN{ if(d>0) printf "%.0f", q/d}') B/rcpt), spool index $s B ($(awk -v q="$s" -v d="$d" 'BEGIN{ if(d>0) printf "%.0f", q/d}') B/rcpt)"
}

echo "# $(date -u +%FT%TZ) $(nproc) cores; N=$N DOMAINS=$DOMAINS SIZE=$SIZE CONNS=$CONNS bin=$BIN"
"$BIN" load sink --listen "127.0.0.1:$SINK_PORT" --duration "${TIMEOUT}s" --rcpt-tempfail "$SUFFIX=1" \
  > /dev/null 2>&1 &
SINK=$!; PIDS+=("$SINK")
start_engine; wait_ready
echo "idle: RSS $(rss_mib "$ENGINE") MiB"
t0=$(now)
timeout "$TIMEOUT" "$BIN" load inject --target "127.0.0.1:$PORT" --messages "$N" --connections "$CONNS" \
  --size "$SIZE" --domains "$DOMAINS" --domain-suffix "$SUFFIX" --duration "${TIMEOUT}s" --json > "$DATA/inject.json" 2>/dev/null
t1=$(now)
echo "injected $N in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s"
wait_depth "$N"; wait_settled
report "live (+3 s)"
sleep 12
report "live (+15 s)"
kill -9 "$ENGINE"; wait "$ENGINE" 2>/dev/null
: > "$DATA/engine.out"
t0=$(now); start_engine; wait_ready; t1=$(now)
# Accepting: the SMTP greeting arrives.
for _ in $(seq 1 1000); do
  exec 3<>"/dev/tcp/127.0.0.1/$PORT" 2>/dev/null && { read -r -t 5 line <&3; exec 3>&-; [ "${line:0:3}" = 220 ] && break; }
  sleep 0.01
done
t2=$(now)
wait_depth "$N"; t3=$(now)
echo "restart: ready after $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}') s, greeting after $(awk -v a="$t0" -v b="$t2" 'BEGIN{printf "%.2f", b-a}') s, all $N queued after $(awk -v a="$t0" -v b="$t3" 'BEGIN{printf "%.2f", b-a}') s"
sleep 3
report "after restart (+3 s)"
# The allocator gives recovery's transient memory back to the system a few seconds later.
sleep 12
report "after restart (+15 s)"
