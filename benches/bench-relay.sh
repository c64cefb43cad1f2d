#!/usr/bin/env bash
# End-to-end relay benchmark: smtp-source -> Petrel -> sink, fsync on, no DKIM, 1 KiB messages.
#
#   benches/bench-relay.sh            # N=20000 SIZE=1024 SESS=20 RUNS=3
#   REUSE=1 SKIP_INJECTOR=1 SKIP_1000=1 benches/bench-relay.sh   # smtp-source -d, both MTAs
#   BIN=/tmp/petrel-old benches/bench-relay.sh
#
# Petrel relays everything to `petrel load sink --expect N` (--relay-to); the clock runs from the
# first injected message to the sink's N-th arrival. The same smtp-source settings then drive
# ../shared/peers/postfix-bench.sh, whose phase B2 is Postfix's end-to-end rate. The 1,000-domain
# run uses `petrel load run loadtest/scenarios/relay-1000-domains.toml` (the petrel injector: one
# recipient domain per message, zipf weights), then drives a private Postfix (postfix-bench.sh
# KEEP=1) with the same 1,000-domain load. Loopback only; every process stopped by PID.
set -u
cd "$(dirname "$0")/.."
N=${N:-20000}; SIZE=${SIZE:-1024}; SESS=${SESS:-20}; RUNS=${RUNS:-3}
PORT=${PORT:-2725}; SINK_PORT=${SINK_PORT:-2726}; TIMEOUT=${TIMEOUT:-240}
PEERS=${PEERS:-../shared/peers}
BIN=${BIN:-target/release/petrel}
# REUSE=1: smtp-source -d (each session reuses its connection), for Petrel and Postfix alike.
SRC_OPTS=(); [ "${REUSE:-0}" = 1 ] && SRC_OPTS=(-d)
[ -x "$BIN" ] || cargo build --locked --release --bin petrel >&2 || exit 1
TCK=$(getconf CLK_TCK)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; }
trap cleanup EXIT
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
median() { sort -g | awk '{a[NR]=$1} END{ if(NR==0){print "nan"} else if(NR%2){print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2} }'; }

echo "# $(date -u +%FT%TZ) $(nproc) cores; N=$N SIZE=$SIZE SESS=$SESS REUSE=${REUSE:-0} RUNS=$RUNS fsync=on dkim=off bin=$BIN"
rates=(); cpus=()
for run in $(seq 1 "$RUNS"); do
  DATA=$(mktemp -d /tmp/petrel-relay.XXXXXX)
  # smtp-source's messages carry no load id, so completion is counted from accepted messages.
  "$BIN" load sink --listen "127.0.0.1:$SINK_PORT" --duration "${TIMEOUT}s" --stats-file "$DATA/stats.json" \
    --json > "$DATA/sink.json" 2>/dev/null &
  SINK=$!; PIDS+=("$SINK")
  "$BIN" engine --data-dir "$DATA" --smtp-listen "127.0.0.1:$PORT" --metrics-listen 127.0.0.1:0 \
    --admin-listen 127.0.0.1:0 --relay-to "127.0.0.1:$SINK_PORT" --trust-network 127.0.0.0/8 \
    > "$DATA/engine.out" 2> "$DATA/engine.err" &
  ENGINE=$!; PIDS+=("$ENGINE")
  for _ in $(seq 1 300); do grep -q "engine ready" "$DATA/engine.out" 2>/dev/null && break; sleep 0.1; done
  c0=$(cpu_ticks "$ENGINE"); t0=$(date +%s.%N)
  timeout "$TIMEOUT" smtp-source "${SRC_OPTS[@]}" -l "$SIZE" -m "$N" -s "$SESS" -f from@bench.test -t to@remote.test \
    "127.0.0.1:$PORT" > "$DATA/client.out" 2>&1
  t1=$(date +%s.%N)
  accepted() { local v; v=$(grep -o '"messages_accepted": *[0-9]*' "$DATA/stats.json" 2>/dev/null | grep -o '[0-9]*$'); echo "${v:-0}"; }
  deadline=$(( $(date +%s) + TIMEOUT ))
  while [ "$(accepted)" -lt "$N" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.05; done
  t2=$(date +%s.%N); c1=$(cpu_ticks "$ENGINE"); got=$(accepted)
  kill "$SINK"; wait "$SINK" 2>/dev/null
  kill "$ENGINE"; wait "$ENGINE" 2>/dev/null
  rate=$(awk -v n="$got" -v a="$t0" -v b="$t2" 'BEGIN{printf "%.0f", n/(b-a)}')
  cpu=$(awk -v t="$((c1-c0))" -v k="$TCK" -v n="$got" 'BEGIN{ if(n>0) printf "%.3f", (t/k)/n*1000; else print "nan"}')
  inj=$(awk -v n="$N" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n/(b-a)}')
  echo "petrel run=$run: $got/$N delivered, end-to-end $rate msg/s (injection $inj msg/s), $cpu CPU s/1000 msgs"
  rates+=("$rate"); cpus+=("$cpu"); rm -rf "$DATA"
done
pm=$(printf '%s\n' "${rates[@]}" | median); pc=$(printf '%s\n' "${cpus[@]}" | median)
prates=()
if [ -x "$PEERS/postfix-bench.sh" ] && [ "${NO_POSTFIX:-0}" != 1 ]; then
  for run in $(seq 1 "$RUNS"); do
    out=$(N=$N SIZE=$SIZE SESS=$SESS REUSE=${REUSE:-0} TIMEOUT=$TIMEOUT "$PEERS/postfix-bench.sh" 2>&1)
    r=$(echo "$out" | awk '/^B2/{for(i=1;i<=NF;i++) if($i=="msg/s,"||$i=="msg/s") print $(i-1)}' | head -1)
    echo "postfix run=$run: ${r:-?} msg/s end to end (postfix-bench.sh phase B2)"
    [ -n "$r" ] && prates+=("$r")
  done
fi
fm=$(printf '%s\n' "${prates[@]}" | median)
ratio=$(awk -v a="$pm" -v b="$fm" 'BEGIN{ if(b>0) printf "%.1f", a/b; else print "n/a"}')
echo "MEDIAN 1 domain: petrel $pm msg/s ($pc CPU s/1000 msgs), postfix $fm msg/s, ratio ${ratio}x"
# The same relay path driven by `petrel load inject` (CONNS reused connections, PIPELINING):
# engine, sink and injector CPU per message are reported separately (all three share the cores).
if [ "${SKIP_INJECTOR:-0}" != 1 ]; then
  IN=${IN:-40000}; CONNS=${CONNS:-200}
  erates=(); ecpus=()
  for run in $(seq 1 "$RUNS"); do
    DATA=$(mktemp -d /tmp/petrel-relay.XXXXXX)
    "$BIN" load sink --listen "127.0.0.1:$SINK_PORT" --duration "${TIMEOUT}s" --stats-file "$DATA/stats.json" \
      > /dev/null 2>&1 &
    SINK=$!; PIDS+=("$SINK")
    "$BIN" engine --data-dir "$DATA" --smtp-listen "127.0.0.1:$PORT" --metrics-listen 127.0.0.1:0 \
      --admin-listen 127.0.0.1:0 --relay-to "127.0.0.1:$SINK_PORT" --trust-network 127.0.0.0/8 \
      > "$DATA/engine.out" 2> "$DATA/engine.err" &
    ENGINE=$!; PIDS+=("$ENGINE")
    for _ in $(seq 1 300); do grep -q "engine ready" "$DATA/engine.out" 2>/dev/null && break; sleep 0.1; done
    accepted() { local v; v=$(grep -o '"messages_accepted": *[0-9]*' "$DATA/stats.json" 2>/dev/null | grep -o '[0-9]*$'); echo "${v:-0}"; }
    c0=$(cpu_ticks "$ENGINE"); s0=$(cpu_ticks "$SINK"); t0=$(date +%s.%N)
    timeout "$TIMEOUT" "$BIN" load inject --target "127.0.0.1:$PORT" --messages "$IN" --connections "$CONNS" \
      --size "$SIZE" --json > "$DATA/inject.json" 2>/dev/null
    t1=$(date +%s.%N)
    deadline=$(( $(date +%s) + TIMEOUT ))
    while [ "$(accepted)" -lt "$IN" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.02; done
    t2=$(date +%s.%N); c1=$(cpu_ticks "$ENGINE"); s1=$(cpu_ticks "$SINK"); got=$(accepted)
    kill "$SINK" "$ENGINE"; wait "$SINK" "$ENGINE" 2>/dev/null
    icpu=$(grep -o '"cpu_s_per_1000_msgs": *[0-9.]*' "$DATA/inject.json" | grep -o '[0-9.]*$')
    rate=$(awk -v n="$got" -v a="$t0" -v b="$t2" 'BEGIN{printf "%.0f", n/(b-a)}')
    inj=$(awk -v n="$IN" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n/(b-a)}')
    cpu=$(awk -v t="$((c1-c0))" -v k="$TCK" -v n="$got" 'BEGIN{ if(n>0) printf "%.3f", (t/k)/n*1000; else print "nan"}')
    scpu=$(awk -v t="$((s1-s0))" -v k="$TCK" -v n="$got" 'BEGIN{ if(n>0) printf "%.3f", (t/k)/n*1000; else print "nan"}')
    echo "petrel-injector conns=$CONNS run=$run: $got/$IN delivered, end-to-end $rate msg/s (injection $inj msg/s), CPU s/1000 msgs: engine $cpu, sink $scpu, injector ${icpu:-?}"
    erates+=("$rate"); ecpus+=("$cpu"); rm -rf "$DATA"
  done
  echo "MEDIAN petrel-injector conns=$CONNS: $(printf '%s\n' "${erates[@]}" | median) msg/s end to end, engine $(printf '%s\n' "${ecpus[@]}" | median) CPU s/1000 msgs"
fi
if [ "${SKIP_1000:-0}" != 1 ]; then
  # As shipped (20 injector connections, 20,000 messages), then with CONNS_1000 connections and
  # IN_1000 messages (120,000: long enough that the start-up does not weigh; a temp copy).
  SCEN=loadtest/scenarios/relay-1000-domains.toml
  SCEN_WIDE=$(mktemp --suffix=.toml /tmp/petrel-relay-1000.XXXXXX)
  CONNS_1000=${CONNS_1000:-200}
  sed "s/^connections = 20\$/connections = $CONNS_1000/; s/^messages = 20000\$/messages = ${IN_1000:-120000}/" "$SCEN" > "$SCEN_WIDE"
  for scen in "$SCEN" "$SCEN_WIDE"; do
    conns=$(awk -F' = ' '/^connections/{print $2}' "$scen")
    for run in $(seq 1 "$RUNS"); do
      "$BIN" load run "$scen" 2>&1 | grep -iE "rate|msg/s|complete" | head -3 | sed "s/^/1000-domains conns=$conns run=$run: /"
    done
  done
  rm -f "$SCEN_WIDE"
  # Postfix with the same 1,000-domain zipf load from the same injector (CONNS_1000 connections,
  # PF_N messages): a private instance left running by postfix-bench.sh KEEP=1, relaying to its
  # smtp-sink; end to end = from the first injected message to the sink's count reaching PF_N.
  if [ -x "$PEERS/postfix-bench.sh" ] && [ "${NO_POSTFIX:-0}" != 1 ]; then
    PF_N=${PF_N:-20000}; PF_BASE=/var/tmp/pfbench-1000
    BASE=$PF_BASE KEEP=1 "$PEERS/postfix-bench.sh" > /dev/null 2>&1
    pf_count() { tr '\r' '\n' < "$PF_BASE/sink_2526.log" 2>/dev/null | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2; }
    pfrates=()
    for run in $(seq 1 "$RUNS"); do
      before=$(pf_count); before=${before:-0}; t0=$(date +%s.%N)
      timeout "$TIMEOUT" "$BIN" load inject --target 127.0.0.1:10025 --messages "$PF_N" --connections "$CONNS_1000" \
        --size "$SIZE" --domains 1000 --domain-weights zipf --mail-from from@pfbench.test --json > /dev/null 2>&1
      deadline=$(( $(date +%s) + TIMEOUT ))
      while [ "$(( $(pf_count || echo 0) - before ))" -lt "$PF_N" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.05; done
      t2=$(date +%s.%N); got=$(( $(pf_count || echo 0) - before ))
      r=$(awk -v n="$got" -v a="$t0" -v b="$t2" 'BEGIN{printf "%.0f", n/(b-a)}')
      echo "postfix 1000-domains conns=$CONNS_1000 run=$run: $got/$PF_N delivered, end-to-end $r msg/s"
      pfrates+=("$r")
    done
    BASE=$PF_BASE STOP=1 "$PEERS/postfix-bench.sh" > /dev/null 2>&1
    echo "MEDIAN postfix 1000-domains: $(printf '%s\n' "${pfrates[@]}" | median) msg/s end to end"
  fi
fi
