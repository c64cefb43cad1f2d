#!/usr/bin/env bash
# Cluster-wide quotas on Redis (issue 19), on against off in the same run: one control plane
# (`petrel control serve`, SQLite), TWO engines linked to it (`--shards 1 --no-pin` each) relaying
# to one `petrel load sink`, one tenant with limits far above the load (MPS_MAX messages a second,
# MPD_MAX a day: nothing is refused, so what is measured is the bookkeeping) and an SMTP
# credential; two `petrel load inject` processes, one per engine, submit N messages in total at
# once with AUTH PLAIN (`--development`: AUTH without STARTTLS for loopback clients), 1 KiB, the
# 1,000-domain zipf load, CONNS connections in all. Mode "on": both engines have
# `[cluster] redis_url` on one private `redis-server`; mode "off": no `[cluster]` section (each
# engine counts in its own memory). Rounds alternate off and on, same binary. Per round: msg/s
# (both engines together, from the first message to the sink's N-th), engine CPU s per 1,000
# messages (utime + stime of both engines, /proc/<pid>/stat), and for "on" the Redis round trips
# per 1,000 messages (the engines' `petrel_cluster_quota_redis_requests_total{result="ok"}`, and
# Redis's own `INFO commandstats` calls), Redis's CPU per 1,000 messages and the admissions that
# waited for a batch (`petrel_cluster_quota_waits_total`). Then the medians and on/off.
# Loopback only; every loop bounded; every process stopped by PID.
#
#   ROUNDS=3 benches/bench-fleet-quotas.sh [BIN]      (BIN defaults to target/release/petrel)
#
# N, CONNS, ROUNDS, SIZE, TIMEOUT, MPS_MAX, MPD_MAX, SHARDS; MODES="off on" (the order in a
# round); KEEP=1 keeps the data directories.
set -u
cd "$(dirname "$0")/.."
BIN=${1:-target/release/petrel}
N=${N:-100000}; CONNS=${CONNS:-200}; ROUNDS=${ROUNDS:-3}; SIZE=${SIZE:-1024}; TIMEOUT=${TIMEOUT:-300}
MPS_MAX=${MPS_MAX:-1000000}; MPD_MAX=${MPD_MAX:-100000000}; SHARDS=${SHARDS:-1}; MODES=${MODES:-off on}
SMTP1=${SMTP1:-2765}; SMTP2=${SMTP2:-2766}; SINK_PORT=${SINK_PORT:-2767}; API_PORT=${API_PORT:-2768}
PUSH_PORT=${PUSH_PORT:-2769}; MET1=${MET1:-2770}; MET2=${MET2:-2771}; REDIS_PORT=${REDIS_PORT:-2772}
[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build --release --locked)" >&2; exit 2; }
command -v redis-server > /dev/null && command -v redis-cli > /dev/null \
  || { echo "redis-server and redis-cli are needed" >&2; exit 2; }
TCK=$(getconf CLK_TCK)
PIDS=()
WORK=$(mktemp -d /tmp/petrel-fq.XXXXXX)
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  [ "${KEEP:-0}" = 1 ] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
median() { sort -g | awk '{a[NR]=$1} END{ if(NR==0){print "nan"} else if(NR%2){print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2} }'; }
api() { curl -s -X "$1" "http://127.0.0.1:$API_PORT$2" -H "Authorization: Bearer $3" \
  -H 'Content-Type: application/json' ${4:+-d "$4"}; }
wait_for() { for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
# Redis's own count of round trips: the calls of EVALSHA, EVAL and SCRIPT (what a client sends for
# a script); and of every command but INFO, which adds the commands the scripts run inside Redis.
redis_calls() { rcli INFO commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_/ && $1 != "cmdstat_info" {s += $3} END{print s+0}'; }
redis_evals() { rcli INFO commandstats | tr -d '\r' | awk -F'[:=,]' '$1 == "cmdstat_evalsha" || $1 == "cmdstat_eval" || $1 ~ /^cmdstat_script/ {s += $3} END{print s+0}'; }
# A counter or gauge of an engine's scrape, summed over its series matching $2.
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v re="$2" '$0 ~ re {s += $NF} END{printf "%.0f", s}'; }

echo "# $(date -u +%FT%TZ) $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
echo "# BIN=$BIN ($(git rev-parse --short HEAD 2>/dev/null)) N=$N CONNS=$CONNS ROUNDS=$ROUNDS SIZE=$SIZE SHARDS=$SHARDS limits $MPS_MAX/s $MPD_MAX/day"

# One Redis for the whole run (idle in "off"), no persistence.
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --protected-mode yes \
  --daemonize no > "$WORK/redis.log" 2>&1 &
REDIS=$!; PIDS+=("$REDIS")
for _ in $(seq 1 100); do [ "$(rcli PING 2>/dev/null)" = PONG ] && break; sleep 0.1; done
[ "$(rcli PING 2>/dev/null)" = PONG ] || { echo "redis did not start"; cat "$WORK/redis.log"; exit 1; }
echo "# $(redis-server --version)"

# One control plane for the whole run: the tenant, its domain, its limits, its SMTP credential.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
  -keyout "$WORK/push.key" -out "$WORK/push.pem" >/dev/null 2>&1
"$BIN" control serve --data-dir "$WORK/cp" --api-listen "127.0.0.1:$API_PORT" --push-listen "127.0.0.1:$PUSH_PORT" \
  --push-tls-cert "$WORK/push.pem" --push-tls-key "$WORK/push.key" > "$WORK/cp.out" 2> "$WORK/cp.err" &
CP=$!; PIDS+=("$CP")
wait_for "$WORK/cp.out" "owner API key" || { echo "control plane did not start"; cat "$WORK/cp.err"; exit 1; }
OWNER=$(grep -o 'keep it): .*' "$WORK/cp.out" | awk '{print $NF}')
TENANT_JSON=$(api POST /v1/tenants "$OWNER" '{"name":"bench","allow_unverified_domains":true}')
ADMIN=$(echo "$TENANT_JSON" | python3 -c 'import json,sys; print(json.load(sys.stdin)["admin_key"]["secret"])')
TENANT=$(echo "$TENANT_JSON" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tenant"]["id"])')
api POST "/v1/tenants/$TENANT/guardrails/lift-cap" "$OWNER" > /dev/null
LIMITS=$(api PUT "/v1/tenants/$TENANT/limits" "$OWNER" \
  "{\"messages_per_second_max\":$MPS_MAX,\"messages_per_day_max\":$MPD_MAX}")
echo "$LIMITS" | grep -q "\"messages_per_day_max\":$MPD_MAX" || { echo "limits not set: $LIMITS"; exit 1; }
api POST /v1/domains "$ADMIN" '{"name":"petrel-load.test","algorithm":"ed25519"}' > /dev/null
CRED=$(api POST /v1/credentials "$ADMIN" \
  '{"kind":"smtp","name":"bench","username":"bench","allowed_sender_domains":["petrel-load.test"]}')
PASSWORD=$(echo "$CRED" | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])') \
  || { echo "no SMTP credential: $CRED"; exit 1; }
AUTH="bench:$PASSWORD"
printf '[cluster]\nredis_url = "redis://127.0.0.1:%s/0"\n' "$REDIS_PORT" > "$WORK/on.toml"
: > "$WORK/off.toml"

declare -A rates cpus trips rtrips rcpus waits
for round in $(seq 1 "$ROUNDS"); do
  for mode in $MODES; do
    D="$WORK/r$round-$mode"; mkdir -p "$D"
    rcli FLUSHALL > /dev/null; rcli CONFIG RESETSTAT > /dev/null
    "$BIN" load sink --listen "127.0.0.1:$SINK_PORT" --duration "$((TIMEOUT + 120))s" --stats-file "$D/stats.json" \
      > /dev/null 2>&1 &
    SINK=$!; PIDS+=("$SINK")
    ENG=()
    for e in 1 2; do
      if [ "$e" = 1 ]; then P=$SMTP1; M=$MET1; else P=$SMTP2; M=$MET2; fi
      "$BIN" engine --config "$WORK/$mode.toml" --data-dir "$D/e$e" --shards "$SHARDS" --no-pin \
        --smtp-listen "127.0.0.1:$P" --metrics-listen "127.0.0.1:$M" --admin-listen 127.0.0.1:0 \
        --relay-to "127.0.0.1:$SINK_PORT" --development --control "127.0.0.1:$PUSH_PORT" \
        --control-token-file "$WORK/cp/control/push.token" --control-ca "$WORK/push.pem" \
        > "$D/e$e.out" 2> "$D/e$e.err" &
      ENG+=("$!"); PIDS+=("$!")
    done
    for e in 1 2; do
      wait_for "$D/e$e.out" "engine ready" || { echo "engine $e did not start"; cat "$D/e$e.err"; exit 1; }
    done
    # Bounded: until the credential works at both engines (the snapshot arrived; argon2 ran once
    # and its success is cached, so the timed run's AUTHs take the fast path).
    for P in $SMTP1 $SMTP2; do
      ok=0
      for _ in $(seq 1 100); do
        if "$BIN" load inject --target "127.0.0.1:$P" --messages 10 --connections 1 --threads 1 --auth "$AUTH" \
          --domains 1000 --domain-weights zipf --strict > /dev/null 2>&1; then ok=1; break; fi
        sleep 0.2
      done
      [ "$ok" = 1 ] || { echo "AUTH never worked at 127.0.0.1:$P"; tail -5 "$D"/e*.err; exit 1; }
    done
    accepted() { local v; v=$(grep -o '"messages_accepted": *[0-9]*' "$D/stats.json" 2>/dev/null | grep -o '[0-9]*$'); echo "${v:-0}"; }
    deadline=$(( $(date +%s) + 30 ))
    while [ "$(accepted)" -lt 20 ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.05; done
    base=$(accepted)
    q0=$(( $(metric "$MET1" '^petrel_cluster_quota_redis_requests_total.*result="ok"') \
      + $(metric "$MET2" '^petrel_cluster_quota_redis_requests_total.*result="ok"') ))
    w0=$(( $(metric "$MET1" '^petrel_cluster_quota_waits_total') + $(metric "$MET2" '^petrel_cluster_quota_waits_total') ))
    r0=$(redis_calls); e0=$(redis_evals); rc0=$(cpu_ticks "$REDIS")
    c0=$(( $(cpu_ticks "${ENG[0]}") + $(cpu_ticks "${ENG[1]}") )); t0=$(date +%s.%N)
    INJ=()
    for P in $SMTP1 $SMTP2; do
      timeout "$TIMEOUT" "$BIN" load inject --target "127.0.0.1:$P" --messages "$((N / 2))" \
        --connections "$((CONNS / 2))" --threads 1 --auth "$AUTH" --size "$SIZE" --domains 1000 \
        --domain-weights zipf --json > "$D/inject-$P.json" 2>/dev/null &
      INJ+=("$!"); PIDS+=("$!")
    done
    wait "${INJ[@]}" 2>/dev/null
    want=$(( base + (N / 2) * 2 ))
    deadline=$(( $(date +%s) + TIMEOUT ))
    while [ "$(accepted)" -lt "$want" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.02; done
    t2=$(date +%s.%N); c1=$(( $(cpu_ticks "${ENG[0]}") + $(cpu_ticks "${ENG[1]}") ))
    rc1=$(cpu_ticks "$REDIS"); r1=$(redis_calls); e1=$(redis_evals)
    got=$(( $(accepted) - base ))
    q1=$(( $(metric "$MET1" '^petrel_cluster_quota_redis_requests_total.*result="ok"') \
      + $(metric "$MET2" '^petrel_cluster_quota_redis_requests_total.*result="ok"') ))
    qerr=$(( $(metric "$MET1" '^petrel_cluster_quota_redis_requests_total.*result="error"') \
      + $(metric "$MET2" '^petrel_cluster_quota_redis_requests_total.*result="error"') ))
    w1=$(( $(metric "$MET1" '^petrel_cluster_quota_waits_total') + $(metric "$MET2" '^petrel_cluster_quota_waits_total') ))
    fb=$(( $(metric "$MET1" '^petrel_cluster_quota_fallback ') + $(metric "$MET2" '^petrel_cluster_quota_fallback ') ))
    # Not accepted by the engines (4xx, 5xx, errors, AUTH failures), both injectors.
    refused=$(cat "$D"/inject-*.json | python3 -c '
import json, sys
t = 0
for line in sys.stdin:
    if line.strip().startswith("{"):
        c = json.loads(line)["counts"]
        t += c["messages_4xx"] + c["messages_5xx"] + c["messages_error"] + c["auth_failures"]
print(t)' 2>/dev/null)
    rate=$(awk -v n="$got" -v a="$t0" -v b="$t2" 'BEGIN{printf "%.0f", n/(b-a)}')
    cpu=$(awk -v t="$((c1-c0))" -v k="$TCK" -v n="$got" 'BEGIN{ if(n>0) printf "%.4f", (t/k)/n*1000; else print "nan"}')
    line="round=$round mode=$mode: $got/$N delivered, $rate msg/s, engines $cpu CPU s/1000 msgs, refused ${refused:-?}"
    rates[$mode.$round]=$rate; cpus[$mode.$round]=$cpu
    if [ "$mode" = on ]; then
      trip=$(awk -v q="$((q1-q0))" -v n="$got" 'BEGIN{ if(n>0) printf "%.2f", q/n*1000; else print "nan"}')
      live="$(metric "$MET1" '^petrel_cluster_engines_live ')/$(metric "$MET2" '^petrel_cluster_engines_live ')"
      rtrip=$(awk -v q="$((e1-e0))" -v n="$got" 'BEGIN{ if(n>0) printf "%.2f", q/n*1000; else print "nan"}')
      rcpu=$(awk -v t="$((rc1-rc0))" -v k="$TCK" -v n="$got" 'BEGIN{ if(n>0) printf "%.4f", (t/k)/n*1000; else print "nan"}')
      wait_n=$((w1-w0))
      trips[$round]=$trip; rtrips[$round]=$rtrip; rcpus[$round]=$rcpu; waits[$round]=$wait_n
      line="$line; Redis round trips/1000: $trip (engines' metric, $((q1-q0)) in all), $rtrip (Redis commandstats: $((e1-e0)) EVALSHA/EVAL/SCRIPT, $((r1-r0)) commands counting those the scripts run); Redis $rcpu CPU s/1000 msgs; admissions that waited for grants: $wait_n; errors $qerr; engines_live (as each engine last heard) $live; fallback gauges $fb"
    fi
    echo "$line"
    kill "${ENG[@]}" "$SINK" 2>/dev/null; wait "${ENG[@]}" "$SINK" 2>/dev/null
    PIDS=("$REDIS" "$CP")   # only what is still running: no stale PID is signalled later
    [ "${KEEP:-0}" = 1 ] || rm -rf "$D"
  done
done
for mode in $MODES; do
  m=$(for r in $(seq 1 "$ROUNDS"); do echo "${rates[$mode.$r]}"; done | median)
  c=$(for r in $(seq 1 "$ROUNDS"); do echo "${cpus[$mode.$r]}"; done | median)
  extra=""
  if [ "$mode" = on ]; then
    t=$(for r in $(seq 1 "$ROUNDS"); do echo "${trips[$r]}"; done | median)
    rt=$(for r in $(seq 1 "$ROUNDS"); do echo "${rtrips[$r]}"; done | median)
    rc=$(for r in $(seq 1 "$ROUNDS"); do echo "${rcpus[$r]}"; done | median)
    extra=", Redis round trips/1000 msgs $t (engines) / $rt (Redis), Redis $rc CPU s/1000 msgs"
  fi
  echo "MEDIAN mode=$mode: $m msg/s, engines $c CPU s/1000 msgs$extra"
  eval "med_$mode=$m"; eval "cmed_$mode=$c"
done
if [ -n "${med_on:-}" ] && [ -n "${med_off:-}" ]; then
  echo "RATIO on/off: rate $(awk -v a="$med_off" -v b="$med_on" 'BEGIN{printf "%.3f", b/a}'), engine CPU per message $(awk -v a="$cmed_off" -v b="$cmed_on" 'BEGIN{printf "%.3f", b/a}')"
fi
