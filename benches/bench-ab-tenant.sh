#!/usr/bin/env bash
# A/B of two binaries on the tenant relay: `petrel control serve` (SQLite), a tenant whose domain
# petrel-load.test is used unverified (its new-tenant cap lifted), `petrel engine` linked to it
# (events on) relaying the 1,000-domain zipf load of `petrel load inject` (1 KiB, 200
# connections) to `petrel load sink`. The binaries alternate round by round, so both sides see
# the same machine. Each side's control plane takes its own extra flags and tenant settings, so
# a side can turn on what the other build lacks (issue 14: VERP return paths and the List-
# Unsubscribe headers; the guardrails, the sending-domain checks and the content check are on by
# default in builds that have them). Loopback only; every process is stopped by PID.
#
#   ROUNDS=3 TRUST_A="--trust-network 127.0.0.0/8" CP_ARGS_B="--return-path-domain bounce.bench.test --public-url https://petrel.bench.test" \
#     TENANT_B='{"list_unsubscribe":true}' benches/bench-ab-tenant.sh /path/to/petrel-a /path/to/petrel-b
set -u
cd "$(dirname "$0")/.."
N=${N:-100000}; CONNS=${CONNS:-200}; ROUNDS=${ROUNDS:-3}; SIZE=${SIZE:-1024}; TIMEOUT=${TIMEOUT:-300}
PORT=${PORT:-2745}; SINK_PORT=${SINK_PORT:-2746}; API_PORT=${API_PORT:-2747}; PUSH_PORT=${PUSH_PORT:-2748}
METRICS_PORT=${METRICS_PORT:-2749}
[ $# -eq 2 ] || { echo "usage: $0 BIN_A BIN_B" >&2; exit 2; }
# How loopback is trusted and signed for the tenant's domain: builds before issue 14 signed any
# domain for `--trust-network`; later ones only for a mapped network (TRUST_A=... for an old A).
TRUST_DEFAULT="--trust-network-domains 127.0.0.0/8=petrel-load.test"
TCK=$(getconf CLK_TCK)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; }
trap cleanup EXIT
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
median() { sort -g | awk '{a[NR]=$1} END{ if(NR==0){print "nan"} else if(NR%2){print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2} }'; }
api() { curl -s -X "$1" "http://127.0.0.1:$API_PORT$2" -H "Authorization: Bearer $3" \
  -H 'Content-Type: application/json' ${4:+-d "$4"}; }
wait_for() { for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }

echo "# $(date -u +%FT%TZ) $(nproc) cores; N=$N CONNS=$CONNS ROUNDS=$ROUNDS SIZE=$SIZE"
echo "# A=$1 ${TRUST_A:-$TRUST_DEFAULT} ${CP_ARGS_A:-} ${TENANT_A:-}"
echo "# B=$2 ${TRUST_B:-$TRUST_DEFAULT} ${CP_ARGS_B:-} ${TENANT_B:-}"
declare -A rates cpus
for round in $(seq 1 "$ROUNDS"); do
  for side in A B; do
    if [ "$side" = A ]; then BIN=$1; CP_ARGS=${CP_ARGS_A:-}; TENANT_PATCH=${TENANT_A:-}; TRUST=${TRUST_A:-$TRUST_DEFAULT}
    else BIN=$2; CP_ARGS=${CP_ARGS_B:-}; TENANT_PATCH=${TENANT_B:-}; TRUST=${TRUST_B:-$TRUST_DEFAULT}; fi
    DATA=$(mktemp -d /tmp/petrel-abt.XXXXXX)
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
      -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE -keyout "$DATA/push.key" -out "$DATA/push.pem" >/dev/null 2>&1
    # shellcheck disable=SC2086
    "$BIN" control serve --data-dir "$DATA/cp" --api-listen "127.0.0.1:$API_PORT" --push-listen "127.0.0.1:$PUSH_PORT" \
      --push-tls-cert "$DATA/push.pem" --push-tls-key "$DATA/push.key" $CP_ARGS > "$DATA/cp.out" 2> "$DATA/cp.err" &
    CP=$!; PIDS+=("$CP")
    wait_for "$DATA/cp.out" "owner API key" || { echo "control plane did not start"; cat "$DATA/cp.err"; exit 1; }
    OWNER=$(grep -o 'keep it): .*' "$DATA/cp.out" | awk '{print $NF}')
    TENANT_JSON=$(api POST /v1/tenants "$OWNER" '{"name":"bench","allow_unverified_domains":true}')
    ADMIN=$(echo "$TENANT_JSON" | python3 -c 'import json,sys; print(json.load(sys.stdin)["admin_key"]["secret"])')
    TENANT=$(echo "$TENANT_JSON" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tenant"]["id"])')
    # Builds with guardrails cap a new tenant at 10 messages a day; older ones answer 404 here.
    api POST "/v1/tenants/$TENANT/guardrails/lift-cap" "$OWNER" > /dev/null
    [ -n "$TENANT_PATCH" ] && api PATCH "/v1/tenants/$TENANT" "$OWNER" "$TENANT_PATCH" > /dev/null
    api POST /v1/domains "$ADMIN" '{"name":"petrel-load.test","algorithm":"ed25519"}' > /dev/null
    "$BIN" load sink --listen "127.0.0.1:$SINK_PORT" --duration "${TIMEOUT}s" --stats-file "$DATA/stats.json" \
      > /dev/null 2>&1 &
    SINK=$!; PIDS+=("$SINK")
    # Builds before issue 16's first step took the token on the command line.
    if "$BIN" engine --help 2>/dev/null | grep -q -- --control-token-file; then
      TOKEN_ARGS=(--control-token-file "$DATA/cp/control/push.token")
    else
      TOKEN_ARGS=(--control-token "$(cat "$DATA/cp/control/push.token")")
    fi
    "$BIN" engine --data-dir "$DATA/engine" --smtp-listen "127.0.0.1:$PORT" \
      --metrics-listen "127.0.0.1:$METRICS_PORT" --admin-listen 127.0.0.1:0 --relay-to "127.0.0.1:$SINK_PORT" \
      $TRUST --control "127.0.0.1:$PUSH_PORT" \
      "${TOKEN_ARGS[@]}" --control-ca "$DATA/push.pem" \
      > "$DATA/engine.out" 2> "$DATA/engine.err" &
    ENGINE=$!; PIDS+=("$ENGINE")
    wait_for "$DATA/engine.out" "engine ready" || { echo "engine did not start"; cat "$DATA/engine.err"; exit 1; }
    sleep 2   # the snapshot with the tenant's domain reaches the engine
    accepted() { local v; v=$(grep -o '"messages_accepted": *[0-9]*' "$DATA/stats.json" 2>/dev/null | grep -o '[0-9]*$'); echo "${v:-0}"; }
    c0=$(cpu_ticks "$ENGINE"); t0=$(date +%s.%N)
    timeout "$TIMEOUT" "$BIN" load inject --target "127.0.0.1:$PORT" --messages "$N" --connections "$CONNS" \
      --size "$SIZE" --domains 1000 --domain-weights zipf --json > "$DATA/inject.json" 2>/dev/null
    deadline=$(( $(date +%s) + TIMEOUT ))
    while [ "$(accepted)" -lt "$N" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.02; done
    t2=$(date +%s.%N); c1=$(cpu_ticks "$ENGINE"); got=$(accepted)
    rate=$(awk -v n="$got" -v a="$t0" -v b="$t2" 'BEGIN{printf "%.0f", n/(b-a)}')
    cpu=$(awk -v t="$((c1-c0))" -v k="$TCK" -v n="$got" 'BEGIN{ if(n>0) printf "%.3f", (t/k)/n*1000; else print "nan"}')
    signed=$(curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk '/^petrel_dkim_signed_total/{s+=$2} END{printf "%.0f", s}')
    echo "round=$round side=$side: $got/$N delivered ($signed signed), $rate msg/s, engine $cpu CPU s/1000 msgs"
    rates[$side.$round]=$rate; cpus[$side.$round]=$cpu
    kill "$ENGINE" "$SINK" "$CP" 2>/dev/null; wait "$ENGINE" "$SINK" "$CP" 2>/dev/null
    [ "${KEEP:-0}" = 1 ] && echo "kept $DATA" || rm -rf "$DATA"
  done
done
for side in A B; do
  m=$(for r in $(seq 1 "$ROUNDS"); do echo "${rates[$side.$r]}"; done | median)
  c=$(for r in $(seq 1 "$ROUNDS"); do echo "${cpus[$side.$r]}"; done | median)
  echo "MEDIAN side=$side: $m msg/s, engine $c CPU s/1000 msgs"
  eval "med_$side=$m"
done
echo "RATIO B/A: $(awk -v a="$med_A" -v b="$med_B" 'BEGIN{printf "%.3f", b/a}')"
