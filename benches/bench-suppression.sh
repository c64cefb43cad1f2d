#!/usr/bin/env bash
# Suppression A/B (issue 14): the 1,000-domain relay with 10 million suppression entries loaded
# in the engine against the same relay with an empty list, alternating in the same run; the
# engine's RSS and load time at 10 million; and the time from a hard bounce at the sink to the
# refusal of that address at RCPT (median and max of SAMPLES), with the 10 million loaded.
#
#   benches/bench-suppression.sh            # N=100000 CONNS=200 RUNS=3 ENTRIES=10000000 SAMPLES=20
#
# Every run: `petrel control serve` (SQLite), a tenant whose domain petrel-load.test is used
# unverified, `petrel engine` linked to it (events on) and relaying to `petrel load sink`, driven
# by `petrel load inject` (1,000 zipf domains, 1 KiB). With ENTRIES > 0 the list is seeded
# straight into the control plane's SQLite before the engine starts (9/10 in the tenant's list,
# 1/10 operator-wide; random addresses that the injected ones never match, so every RCPT pays
# both lookups and is accepted), and the engine gets it the real way: a paged full load over
# its link. The clock starts after the load is complete (gauge petrel_suppression_entries).
# The bounce-to-refusal samples send to u<i>@bounce.test, which the sink refuses (550 5.1.1);
# the engine's `bounced` event adds the suppression at the control plane; the time is from that
# event's timestamp_ms to the first RCPT refused with 550 5.7.1 (probed every 10 ms). One sample
# right after the run (its bounce's event queues behind the run's 200,000 events), then SAMPLES
# once the control plane has all of the run's events.
# Loopback only; every process is stopped by PID.
set -u
cd "$(dirname "$0")/.."
N=${N:-100000}; CONNS=${CONNS:-200}; RUNS=${RUNS:-3}; SIZE=${SIZE:-1024}; TIMEOUT=${TIMEOUT:-300}
ENTRIES=${ENTRIES:-10000000}; SAMPLES=${SAMPLES:-20}
PORT=${PORT:-2725}; SINK_PORT=${SINK_PORT:-2726}; API_PORT=${API_PORT:-2780}; PUSH_PORT=${PUSH_PORT:-2781}
METRICS_PORT=${METRICS_PORT:-2790}
BIN=${BIN:-target/release/petrel}
[ -x "$BIN" ] || cargo build --locked --release --bin petrel >&2 || exit 1
TCK=$(getconf CLK_TCK)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; }
trap cleanup EXIT
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
rss_mib() { awk '/VmRSS/{printf "%.0f", $2/1024}' "/proc/$1/status" 2>/dev/null; }
median() { sort -g | awk '{a[NR]=$1} END{ if(NR==0){print "nan"} else if(NR%2){print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2} }'; }
api() { curl -s -X "$1" "http://127.0.0.1:$API_PORT$2" -H "Authorization: Bearer $3" \
  -H 'Content-Type: application/json' ${4:+-d "$4"}; }
wait_for() { for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }
gauge() { curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk -v g="$1" '$1==g{printf "%.0f", $2}'; }

seed() { # db entries tenant: one statement per scope, generated in SQLite itself
  local tenant_n=$(( $2 * 9 / 10 )); local op_n=$(( $2 - tenant_n ))
  sqlite3 "$1" > /dev/null <<SQL
PRAGMA busy_timeout = 60000;
BEGIN;
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $tenant_n)
INSERT INTO suppressions (scope, address, domain, reason, created_unix_ms, updated_unix_ms)
SELECT '$3', 'gone' || x || '@list' || (x % 5000) || '.example', 'list' || (x % 5000) || '.example',
       'hard_bounce', 0, 0 FROM c;
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $op_n)
INSERT INTO suppressions (scope, address, domain, reason, created_unix_ms, updated_unix_ms)
SELECT '*', 'blocked' || x || '@spam' || (x % 500) || '.example', 'spam' || (x % 500) || '.example',
       'complaint', 0, 0 FROM c;
COMMIT;
SQL
}

echo "# $(date -u +%FT%TZ) $(nproc) cores; N=$N CONNS=$CONNS RUNS=$RUNS SIZE=$SIZE ENTRIES=$ENTRIES"
declare -A rates cpus
refusals=()
for run in $(seq 1 "$RUNS"); do
  for mode in empty loaded; do
    DATA=$(mktemp -d /tmp/petrel-supp.XXXXXX)
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
      -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE -keyout "$DATA/push.key" -out "$DATA/push.pem" >/dev/null 2>&1
    "$BIN" control serve --data-dir "$DATA/cp" --api-listen "127.0.0.1:$API_PORT" --push-listen "127.0.0.1:$PUSH_PORT" \
      --push-tls-cert "$DATA/push.pem" --push-tls-key "$DATA/push.key" > "$DATA/cp.out" 2> "$DATA/cp.err" &
    CP=$!; PIDS+=("$CP")
    wait_for "$DATA/cp.out" "owner API key" || { echo "control plane did not start"; cat "$DATA/cp.err"; exit 1; }
    OWNER=$(grep -o 'keep it): .*' "$DATA/cp.out" | awk '{print $NF}')
    TENANT_JSON=$(api POST /v1/tenants "$OWNER" '{"name":"bench","allow_unverified_domains":true}')
    ADMIN=$(echo "$TENANT_JSON" | python3 -c 'import json,sys; print(json.load(sys.stdin)["admin_key"]["secret"])')
    TENANT=$(echo "$TENANT_JSON" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tenant"]["id"])')
    # A new tenant may send 10 messages a day until the operator lifts its cap (guardrails, on).
    api POST "/v1/tenants/$TENANT/guardrails/lift-cap" "$OWNER" > /dev/null
    api POST /v1/domains "$ADMIN" '{"name":"petrel-load.test","algorithm":"ed25519"}' > "$DATA/domain.json"
    want=0
    if [ "$mode" = loaded ]; then
      s0=$(date +%s.%N); seed "$DATA/cp/control/petrel.db" "$ENTRIES" "$TENANT"; s1=$(date +%s.%N)
      want=$ENTRIES
    fi
    "$BIN" load sink --listen "127.0.0.1:$SINK_PORT" --duration "${TIMEOUT}s" --stats-file "$DATA/stats.json" \
      --rcpt-permfail bounce.test=1 > /dev/null 2>&1 &
    SINK=$!; PIDS+=("$SINK")
    "$BIN" engine --data-dir "$DATA/engine" --smtp-listen "127.0.0.1:$PORT" \
      --metrics-listen "127.0.0.1:$METRICS_PORT" --admin-listen 127.0.0.1:0 --relay-to "127.0.0.1:$SINK_PORT" \
      --trust-network-domains 127.0.0.0/8=petrel-load.test --control "127.0.0.1:$PUSH_PORT" \
      --control-token-file "$DATA/cp/control/push.token" --control-ca "$DATA/push.pem" \
      > "$DATA/engine.out" 2> "$DATA/engine.err" &
    ENGINE=$!; PIDS+=("$ENGINE")
    wait_for "$DATA/engine.out" "engine ready" || { echo "engine did not start"; cat "$DATA/engine.err"; exit 1; }
    l0=$(date +%s.%N); rss0=$(rss_mib "$ENGINE")
    deadline=$(( $(date +%s) + TIMEOUT ))
    until [ "$(gauge petrel_suppression_entries)" = "$want" ] && [ -n "$(gauge petrel_suppression_entries)" ]; do
      [ "$(date +%s)" -lt "$deadline" ] || { echo "list never loaded: $(gauge petrel_suppression_entries)/$want"; exit 1; }
      sleep 0.2
    done
    l1=$(date +%s.%N); sleep 1
    extra=""
    if [ "$mode" = loaded ]; then
      extra=" seeded in $(awk -v a="$s0" -v b="$s1" 'BEGIN{printf "%.0f", b-a}') s, engine loaded in $(awk -v a="$l0" -v b="$l1" 'BEGIN{printf "%.1f", b-a}') s, RSS ${rss0} -> $(rss_mib "$ENGINE") MiB, set $(( $(gauge petrel_suppression_memory_bytes) / 1048576 )) MiB;"
    else
      extra=" RSS $(rss_mib "$ENGINE") MiB;"
    fi
    accepted() { local v; v=$(grep -o '"messages_accepted": *[0-9]*' "$DATA/stats.json" 2>/dev/null | grep -o '[0-9]*$'); echo "${v:-0}"; }
    c0=$(cpu_ticks "$ENGINE"); t0=$(date +%s.%N)
    timeout "$TIMEOUT" "$BIN" load inject --target "127.0.0.1:$PORT" --messages "$N" --connections "$CONNS" \
      --size "$SIZE" --domains 1000 --domain-weights zipf --json > "$DATA/inject.json" 2>/dev/null
    deadline=$(( $(date +%s) + TIMEOUT ))
    while [ "$(accepted)" -lt "$N" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.02; done
    t2=$(date +%s.%N); c1=$(cpu_ticks "$ENGINE"); got=$(accepted)
    rate=$(awk -v n="$got" -v a="$t0" -v b="$t2" 'BEGIN{printf "%.0f", n/(b-a)}')
    cpu=$(awk -v t="$((c1-c0))" -v k="$TCK" -v n="$got" 'BEGIN{ if(n>0) printf "%.3f", (t/k)/n*1000; else print "nan"}')
    if [ "$mode" = loaded ] && [ "$SAMPLES" -gt 0 ]; then
      # Right after the run (the bounce's event queues behind the run's), then once the run's
      # events are all in (DRAINED_SAMPLES more).
      r=$(python3 benches/suppression_probe.py --smtp "127.0.0.1:$PORT" --api "http://127.0.0.1:$API_PORT" \
        --key "$ADMIN" --samples 1 --tag "r$run-hot")
      extra="$extra first bounce right after the run ${r%% *} ms;"
      r=$(python3 benches/suppression_probe.py --smtp "127.0.0.1:$PORT" --api "http://127.0.0.1:$API_PORT" \
        --key "$ADMIN" --samples "$SAMPLES" --tag "r$run" --delivered "$N")
      extra="$extra bounce->refusal ms median/max $r;"
      refusals+=("$r")
    fi
    echo "list=$mode run=$run: $got/$N delivered, $rate msg/s, engine $cpu CPU s/1000 msgs;$extra"
    rates[$mode.$run]=$rate; cpus[$mode.$run]=$cpu
    kill "$ENGINE" "$SINK" "$CP" 2>/dev/null; wait "$ENGINE" "$SINK" "$CP" 2>/dev/null
    [ "${KEEP:-0}" = 1 ] && echo "kept $DATA" || rm -rf "$DATA"
  done
done
for mode in empty loaded; do
  m=$(for r in $(seq 1 "$RUNS"); do echo "${rates[$mode.$r]}"; done | median)
  c=$(for r in $(seq 1 "$RUNS"); do echo "${cpus[$mode.$r]}"; done | median)
  echo "MEDIAN list=$mode: $m msg/s, engine $c CPU s/1000 msgs"
  eval "med_$mode=$m"
done
echo "RATIO loaded/empty: $(awk -v a="$med_loaded" -v b="$med_empty" 'BEGIN{printf "%.3f", a/b}')"
