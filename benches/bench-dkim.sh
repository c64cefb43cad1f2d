#!/usr/bin/env bash
# End-to-end throughput with DKIM signing (Ed25519 and RSA-2048), next to the same path unsigned,
# in one run: `petrel up --relay-to SINK` (control plane + engine, development domain
# dev.petrel.test with an Ed25519 key, loopback trusted) and `petrel load inject` with reused
# connections. Messages whose From is @dev.petrel.test are signed with Ed25519; for
# @rsa.bench.test each run first creates, through the admin API with the owner key, a tenant that
# may send from unverified domains and its domain rsa.bench.test with an RSA-2048 key;
# @unsigned.test messages are not signed.
#
#   benches/bench-dkim.sh            # N=100000 CONNS=200 RUNS=3 (long enough for steady state)
#   SHARDS=1 ...                     # one shard (the other core left to the load tools)
#   NO_RELAY=1 ...                   # delivery off: the rate is what the injector got accepted
set -u
cd "$(dirname "$0")/.."
N=${N:-100000}; CONNS=${CONNS:-200}; RUNS=${RUNS:-3}; TIMEOUT=${TIMEOUT:-180}
BIN=${BIN:-$(pwd)/target/release/petrel}
[ -x "$BIN" ] || cargo build --locked --release --bin petrel >&2 || exit 1
TCK=$(getconf CLK_TCK)
# LOAD_SCHED=batch runs the injector and the sink as SCHED_BATCH: on a machine where they share
# the cores with the engine, their wakeups then no longer preempt a shard in the middle of its work.
LOAD=""; [ "${LOAD_SCHED:-}" = batch ] && LOAD="chrt --batch 0"
# With fewer shards than cores (shard i is pinned to CPU i), the injector and the sink are pinned to
# the cores no shard uses, as a separate load machine would be: LOAD_CPUS overrides, "" disables.
if [ -n "${SHARDS:-}" ] && [ "$SHARDS" -lt "$(nproc)" ]; then LOAD_CPUS=${LOAD_CPUS-$SHARDS-$(( $(nproc) - 1 ))}; fi
[ -n "${LOAD_CPUS:-}" ] && LOAD="$LOAD taskset -c $LOAD_CPUS"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; }
trap cleanup EXIT
median() { sort -g | awk '{a[NR]=$1} END{ if(NR==0){print "nan"} else if(NR%2){print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2} }'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
echo "# $(date -u +%FT%TZ) $(nproc) cores; shards=${SHARDS:-$(nproc)} load tools on CPUs ${LOAD_CPUS:-any}${LOAD_SCHED:+ ($LOAD_SCHED)} N=$N CONNS=$CONNS RUNS=$RUNS fsync=on, $([ "${NO_RELAY:-0}" = 1 ] && echo "delivery off" || echo "relay to petrel load sink")"
FROMS=${FROMS:-"load@unsigned.test load@dev.petrel.test load@rsa.bench.test"}
for from in $FROMS; do
  rates=(); cpus=()
  for run in $(seq 1 "$RUNS"); do
    W=$(mktemp -d /tmp/petrel-dkim.XXXXXX)
    SINK=""; RELAY=(--relay-to 127.0.0.1:2926); READY="relay: loopback"
    if [ "${NO_RELAY:-0}" = 1 ]; then
      RELAY=(); READY="owner API key"
    else
      $LOAD "$BIN" load sink --listen 127.0.0.1:2926 --duration "${TIMEOUT}s" --stats-file "$W/stats.json" \
        > /dev/null 2>&1 &
      SINK=$!; PIDS+=("$SINK")
    fi
    (cd "$W" && exec "$BIN" up ${SHARDS:+--shards "$SHARDS"} "${RELAY[@]}" --smtp-listen 127.0.0.1:2925 --api-listen 127.0.0.1:2980 \
       --push-listen 127.0.0.1:2981 --metrics-listen 127.0.0.1:2982 --admin-listen 127.0.0.1:2983 > "$W/up.out" 2>/dev/null) &
    UP=$!; PIDS+=("$UP")
    for _ in $(seq 1 300); do grep -q "$READY" "$W/up.out" 2>/dev/null && break; sleep 0.1; done
    if [ "$from" = load@rsa.bench.test ]; then
      KEY=$(grep -o 'owner API key (shown once, keep it): [^ ]*' "$W/up.out" | awk '{print $NF}')
      TJ=$(curl -s -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
        -d '{"name":"rsa-bench","allow_unverified_domains":true}' http://127.0.0.1:2980/v1/tenants)
      ADMIN=$(echo "$TJ" | python3 -c 'import json,sys; print(json.load(sys.stdin)["admin_key"]["secret"])')
      TID=$(echo "$TJ" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tenant"]["id"])')
      # A new tenant may send 10 messages a day until the operator lifts its cap (guardrails).
      curl -s -o /dev/null -X POST -H "Authorization: Bearer $KEY" \
        "http://127.0.0.1:2980/v1/tenants/$TID/guardrails/lift-cap"
      curl -s -o /dev/null -w "rsa.bench.test domain: HTTP %{http_code}\n" -H "Authorization: Bearer $ADMIN" \
        -H 'Content-Type: application/json' -d '{"name":"rsa.bench.test","algorithm":"rsa2048"}' \
        http://127.0.0.1:2980/v1/domains
    fi
    sleep 1   # the snapshot (with the key) reaches the engine
    c0=$(cpu_ticks "$UP"); t0=$(date +%s.%N)
    $LOAD "$BIN" load inject --target 127.0.0.1:2925 --messages "$N" --connections "$CONNS" --size 1024 \
      --mail-from "$from" --json > "$W/inject.json" 2>/dev/null
    accepted() {
      local v
      if [ -z "$SINK" ]; then   # delivery off: what the engine acknowledged
        v=$(curl -s http://127.0.0.1:2982/metrics | awk '/^petrel_smtp_messages_accepted_total/{s+=$2} END{print s+0}')
      else
        v=$(grep -o '"messages_accepted": *[0-9]*' "$W/stats.json" 2>/dev/null | grep -o '[0-9]*$')
      fi
      echo "${v:-0}"
    }
    deadline=$(( $(date +%s) + TIMEOUT ))
    while [ "$(accepted)" -lt "$N" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.05; done
    t1=$(date +%s.%N); c1=$(cpu_ticks "$UP"); got=$(accepted)
    signed=$(curl -s http://127.0.0.1:2982/metrics | awk '/^petrel_dkim_signed_total/{s+=$2} END{print s+0}')
    rate=$(awk -v n="$got" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n/(b-a)}')
    cpu=$(awk -v t="$((c1-c0))" -v k="$TCK" -v n="$got" 'BEGIN{ if(n>0) printf "%.3f", (t/k)/n*1000; else print "nan"}')
    kill "$UP" $SINK 2>/dev/null; wait "$UP" $SINK 2>/dev/null
    echo "from=$from run=$run: $got/$N $([ -n "$SINK" ] && echo arrived || echo accepted) ($signed signed), end-to-end $rate msg/s, $cpu CPU s/1000 msgs (control plane + engine)"
    rates+=("$rate"); cpus+=("$cpu"); rm -rf "$W"
  done
  echo "MEDIAN from=$from: $(printf '%s\n' "${rates[@]}" | median) msg/s, $(printf '%s\n' "${cpus[@]}" | median) CPU s/1000 msgs"
done
echo "# raw signing ceiling, same machine, same run:"
[ "${NO_CEILING:-0}" = 1 ] || cargo bench --locked -q -p petrel-policy --bench dkim_sign -- --warm-up-time 1 --measurement-time 3 2>/dev/null \
  | grep -iE "ed25519|rsa|per cpu|thrpt|signatures" | head -12
