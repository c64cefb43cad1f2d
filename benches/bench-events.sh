#!/usr/bin/env bash
# Events A/B: the 1,000-domain relay with events on (every outcome through the engine's durable
# backlog to a control plane, and a webhook receiver subscribed to every type) against the same
# relay with events off (`[events] to_control_plane = false`: the same engine, control plane,
# tenant and DKIM signing, only the JSON-lines files).
#
#   benches/bench-events.sh          # N=100000 CONNS=200 RUNS=3, alternating off/on
#   RATE=4000 N=60000 benches/bench-events.sh   # injected at a steady rate: the webhook lag at a
#                                               # load the control plane's store keeps up with
#
# Both runs: `petrel control serve` (SQLite, or DATABASE_URL=postgres://...), a tenant whose
# sending domain petrel-load.test is used unverified (so mail is attributed and Ed25519-signed),
# `petrel engine` linked to it and relaying to `petrel load sink`, driven by `petrel load inject`
# (1,000 zipf domains, 1 KiB). The clock runs from the first injected message to the sink's N-th.
# With events on, the webhook receiver (tests/webhook_receiver.py, HTTP on loopback; the control
# plane runs with --webhooks-allow-loopback) records when each POST arrived; webhook lag is that
# time minus the event's timestamp_ms, over every event of every type. The receiver runs with
# --summary (it checks every signature and parses every body, but logs only the timestamps).
# MODES="on" runs only one side (profiling). Loopback only; every process is stopped by PID.
set -u
cd "$(dirname "$0")/.."
N=${N:-100000}; CONNS=${CONNS:-200}; RUNS=${RUNS:-3}; SIZE=${SIZE:-1024}; TIMEOUT=${TIMEOUT:-300}
PORT=${PORT:-2725}; SINK_PORT=${SINK_PORT:-2726}; API_PORT=${API_PORT:-2780}; PUSH_PORT=${PUSH_PORT:-2781}
BIN=${BIN:-target/release/petrel}
DATABASE_URL=${DATABASE_URL:-}
[ -x "$BIN" ] || cargo build --locked --release --bin petrel >&2 || exit 1
TCK=$(getconf CLK_TCK)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; }
trap cleanup EXIT
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
median() { sort -g | awk '{a[NR]=$1} END{ if(NR==0){print "nan"} else if(NR%2){print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2} }'; }
api() { # method path key [json]
  curl -s -X "$1" "http://127.0.0.1:$API_PORT$2" -H "Authorization: Bearer $3" \
    -H 'Content-Type: application/json' ${4:+-d "$4"}
}
wait_for() { for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }

echo "# $(date -u +%FT%TZ) $(nproc) cores; N=$N CONNS=$CONNS RUNS=$RUNS SIZE=$SIZE RATE=${RATE:-max} store=${DATABASE_URL:+postgres}${DATABASE_URL:-sqlite}"
declare -A rates cpus cpcpus
lags=()
for run in $(seq 1 "$RUNS"); do
  for mode in ${MODES:-off on}; do
    DATA=$(mktemp -d /tmp/petrel-events.XXXXXX)
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
      -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE -keyout "$DATA/push.key" -out "$DATA/push.pem" >/dev/null 2>&1
    if [ -n "$DATABASE_URL" ]; then
      # A fresh database per run: drop every table of the previous one.
      psql "$DATABASE_URL" -q -c 'DROP SCHEMA public CASCADE; CREATE SCHEMA public;' >/dev/null 2>&1
    fi
    "$BIN" control serve --data-dir "$DATA/cp" ${DATABASE_URL:+--database-url "$DATABASE_URL"} \
      --api-listen "127.0.0.1:$API_PORT" --push-listen "127.0.0.1:$PUSH_PORT" \
      --push-tls-cert "$DATA/push.pem" --push-tls-key "$DATA/push.key" --webhooks-allow-loopback \
      > "$DATA/cp.out" 2> "$DATA/cp.err" &
    CP=$!; PIDS+=("$CP")
    wait_for "$DATA/cp.out" "owner API key" || { echo "control plane did not start"; cat "$DATA/cp.err"; exit 1; }
    OWNER=$(grep -o 'keep it): .*' "$DATA/cp.out" | awk '{print $NF}')
    TENANT_JSON=$(api POST /v1/tenants "$OWNER" '{"name":"bench","allow_unverified_domains":true}')
    ADMIN=$(echo "$TENANT_JSON" | python3 -c 'import json,sys; print(json.load(sys.stdin)["admin_key"]["secret"])')
    TENANT=$(echo "$TENANT_JSON" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tenant"]["id"])')
    # A new tenant may send 10 messages a day until the operator lifts its cap (guardrails).
    api POST "/v1/tenants/$TENANT/guardrails/lift-cap" "$OWNER" > /dev/null
    api POST /v1/domains "$ADMIN" '{"name":"petrel-load.test","algorithm":"ed25519"}' > "$DATA/domain.json"
    if [ "$mode" = on ]; then
      python3 tests/webhook_receiver.py --port 0 --port-file "$DATA/wh.port" --secret-file "$DATA/wh.secret" \
        --out "$DATA/wh.jsonl" --summary > /dev/null 2>&1 &
      WH=$!; PIDS+=("$WH")
      for _ in $(seq 1 100); do [ -s "$DATA/wh.port" ] && break; sleep 0.1; done
      api POST /v1/webhooks "$ADMIN" "{\"url\":\"http://127.0.0.1:$(cat "$DATA/wh.port")/hook\",\"events\":[\"accepted\",\"rejected\",\"delivered\",\"deferred\",\"bounced\",\"expired\"]}" \
        > "$DATA/webhook.json"
      python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["secret"])' "$DATA/webhook.json" > "$DATA/wh.secret"
    fi
    printf '[events]\nto_control_plane = %s\n' "$([ "$mode" = on ] && echo true || echo false)" > "$DATA/engine.toml"
    "$BIN" load sink --listen "127.0.0.1:$SINK_PORT" --duration "${TIMEOUT}s" --stats-file "$DATA/stats.json" \
      > /dev/null 2>&1 &
    SINK=$!; PIDS+=("$SINK")
    "$BIN" engine --config "$DATA/engine.toml" --data-dir "$DATA/engine" --smtp-listen "127.0.0.1:$PORT" \
      --metrics-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --relay-to "127.0.0.1:$SINK_PORT" \
      --trust-network-domains 127.0.0.0/8=petrel-load.test --control "127.0.0.1:$PUSH_PORT" \
      --control-token-file "$DATA/cp/control/push.token" --control-ca "$DATA/push.pem" \
      > "$DATA/engine.out" 2> "$DATA/engine.err" &
    ENGINE=$!; PIDS+=("$ENGINE")
    wait_for "$DATA/engine.out" "engine ready" || { echo "engine did not start"; cat "$DATA/engine.err"; exit 1; }
    sleep 1 # the policy snapshot (tenant, domain, key) reaches the engine
    accepted() { local v; v=$(grep -o '"messages_accepted": *[0-9]*' "$DATA/stats.json" 2>/dev/null | grep -o '[0-9]*$'); echo "${v:-0}"; }
    c0=$(cpu_ticks "$ENGINE"); p0=$(cpu_ticks "$CP"); t0=$(date +%s.%N)
    timeout "$TIMEOUT" "$BIN" load inject --target "127.0.0.1:$PORT" --messages "$N" --connections "$CONNS" \
      --size "$SIZE" --domains 1000 --domain-weights zipf ${RATE:+--rate "$RATE"} --json > "$DATA/inject.json" 2>/dev/null
    deadline=$(( $(date +%s) + TIMEOUT ))
    while [ "$(accepted)" -lt "$N" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.02; done
    t2=$(date +%s.%N); c1=$(cpu_ticks "$ENGINE"); got=$(accepted)
    rate=$(awk -v n="$got" -v a="$t0" -v b="$t2" 'BEGIN{printf "%.0f", n/(b-a)}')
    cpu=$(awk -v t="$((c1-c0))" -v k="$TCK" -v n="$got" 'BEGIN{ if(n>0) printf "%.3f", (t/k)/n*1000; else print "nan"}')
    extra=""
    if [ "$mode" = on ]; then
      # Every event (2 per message: accepted, delivered) reaches the receiver; then the lag.
      want=$((2 * got)); deadline=$(( $(date +%s) + TIMEOUT ))
      have() { python3 -c 'import json,sys
n=0
for l in open(sys.argv[1]):
    r=json.loads(l)
    if r.get("status")==200: n+=r["events"]
print(n)' "$DATA/wh.jsonl" 2>/dev/null || echo 0; }
      while [ "$(have)" -lt "$want" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.5; done
      t3=$(date +%s.%N); p1=$(cpu_ticks "$CP")
      lag=$(python3 -c 'import json,sys
lags=[]
for l in open(sys.argv[1]):
    r=json.loads(l)
    if r.get("status")!=200: continue
    for ts in r["event_ts_ms"]: lags.append(r["received_unix_ms"]-ts)
lags.sort()
q=lambda p: lags[min(len(lags)-1,int(p*len(lags)))] if lags else float("nan")
print("%d %.0f %.0f %.0f" % (len(lags), q(0.5), q(0.99), lags[-1] if lags else float("nan")))' "$DATA/wh.jsonl")
      drain=$(awk -v a="$t2" -v b="$t3" 'BEGIN{printf "%.1f", b-a}')
      cpc=$(awk -v t="$((p1-p0))" -v k="$TCK" -v n="$got" 'BEGIN{ if(n>0) printf "%.3f", (t/k)/n*1000; else print "nan"}')
      extra=" webhook: events lag_p50_ms lag_p99_ms lag_max_ms = $lag; all in ${drain}s after the last delivery; control plane $cpc CPU s/1000 msgs"
      lags+=("$(echo "$lag" | awk '{print $3}')"); cpcpus[$run]=$cpc
    fi
    echo "events=$mode run=$run: $got/$N delivered, end-to-end $rate msg/s, engine $cpu CPU s/1000 msgs;$extra"
    rates[$mode.$run]=$rate; cpus[$mode.$run]=$cpu
    kill "$ENGINE" "$SINK" "$CP" ${WH:+"$WH"} 2>/dev/null; wait "$ENGINE" "$SINK" "$CP" ${WH:+"$WH"} 2>/dev/null
    unset WH
    [ "${KEEP:-0}" = 1 ] && echo "kept $DATA" || rm -rf "$DATA"
  done
done
for mode in ${MODES:-off on}; do
  m=$(for r in $(seq 1 "$RUNS"); do echo "${rates[$mode.$r]}"; done | median)
  c=$(for r in $(seq 1 "$RUNS"); do echo "${cpus[$mode.$r]}"; done | median)
  echo "MEDIAN events=$mode: $m msg/s, engine $c CPU s/1000 msgs"
  eval "med_$mode=$m"
done
[ -n "${med_on:-}" ] && [ -n "${med_off:-}" ] && echo "RATIO on/off: $(awk -v a="$med_on" -v b="$med_off" 'BEGIN{printf "%.2f", a/b}')"
[ "${#lags[@]}" -gt 0 ] && echo "webhook lag p99 median $(printf '%s\n' "${lags[@]}" | median) ms"
