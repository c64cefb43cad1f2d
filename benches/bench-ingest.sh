#!/usr/bin/env bash
# Injection benchmark (delivery off, fsync on): Petrel vs Postfix, the same client, the same run.
#
#   benches/bench-ingest.sh            # N=20000 SIZE=1024 SESS="20 200" RUNS=3
#
# For each session count: RUNS runs of smtp-source (Debian postfix) against `petrel engine
# --no-delivery` (fresh data dir each run), then RUNS runs of ../shared/peers/postfix-bench.sh
# (its phase B1 is Postfix's injection rate with the same smtp-source settings). Prints each run
# and the medians, plus Petrel's CPU seconds per 1,000 messages (utime+stime of the engine
# process from /proc). Everything binds 127.0.0.1; every process started is stopped by PID.
set -u
cd "$(dirname "$0")/.."
N=${N:-20000}; SIZE=${SIZE:-1024}; SESS_LIST=${SESS:-"20 200"}; RUNS=${RUNS:-3}
CLIENT=${CLIENT:-smtp-source}   # or "petrel" for `petrel load inject`
REUSE=${REUSE:-0}                # 1: reuse connections (smtp-source -d, --per-connection 0)
SRC_OPTS=""; PER_CONN=1; [ "$REUSE" = 1 ] && { SRC_OPTS="-d"; PER_CONN=0; }
PORT=${PORT:-2625}; TIMEOUT=${TIMEOUT:-180}
PEERS=${PEERS:-../shared/peers}
BIN=target/release/petrel
[ -x "$BIN" ] || cargo build --locked --release --bin petrel >&2 || exit 1
command -v smtp-source >/dev/null || {
  echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >/dev/null 2>&1; }
TCK=$(getconf CLK_TCK)
ENGINE_PID=""
cleanup() { [ -n "$ENGINE_PID" ] && kill "$ENGINE_PID" 2>/dev/null && wait "$ENGINE_PID" 2>/dev/null; }
trap cleanup EXIT

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
median() { sort -g | awk '{a[NR]=$1} END{ if(NR==0){print "nan"} else if(NR%2){print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2} }'; }

echo "# $(date -u +%FT%TZ) $(nproc) cores, $(awk '/model name/{$1=$2=$3="";print;exit}' /proc/cpuinfo)"
echo "# N=$N SIZE=$SIZE RUNS=$RUNS client=$CLIENT reuse=$REUSE fsync=on delivery=off"
for SESS in $SESS_LIST; do
  rates=(); cpus=()
  for run in $(seq 1 "$RUNS"); do
    DATA=$(mktemp -d /tmp/petrel-bench.XXXXXX)
    "$BIN" engine --data-dir "$DATA" --smtp-listen "127.0.0.1:$PORT" --metrics-listen 127.0.0.1:0 \
      --admin-listen 127.0.0.1:0 --no-delivery --trust-network 127.0.0.0/8 \
      > "$DATA/engine.out" 2> "$DATA/engine.err" &
    ENGINE_PID=$!
    for _ in $(seq 1 300); do grep -q "engine ready" "$DATA/engine.out" 2>/dev/null && break; sleep 0.1; done
    c0=$(cpu_ticks "$ENGINE_PID"); t0=$(date +%s.%N)
    if [ "$CLIENT" = petrel ]; then
      timeout "$TIMEOUT" "$BIN" load inject --target "127.0.0.1:$PORT" --messages "$N" --connections "$SESS" \
        --size "$SIZE" --per-connection "$PER_CONN" > "$DATA/client.out" 2>&1
    else
      timeout "$TIMEOUT" smtp-source $SRC_OPTS -l "$SIZE" -m "$N" -s "$SESS" -f from@bench.test -t to@remote.test \
        "127.0.0.1:$PORT" > "$DATA/client.out" 2>&1
    fi
    t1=$(date +%s.%N); c1=$(cpu_ticks "$ENGINE_PID")
    kill "$ENGINE_PID"; wait "$ENGINE_PID" 2>/dev/null; ENGINE_PID=""
    count=$("$BIN" spool count --data-dir "$DATA" | head -1)
    rate=$(awk -v n="$count" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n/(b-a)}')
    cpu=$(awk -v t="$((c1-c0))" -v k="$TCK" -v n="$count" 'BEGIN{printf "%.3f", (t/k)/n*1000}')
    echo "petrel  sess=$SESS run=$run: $count msgs spooled, $rate msg/s, $cpu CPU s/1000 msgs"
    rates+=("$rate"); cpus+=("$cpu")
    rm -rf "$DATA"
  done
  pm=$(printf '%s\n' "${rates[@]}" | median); pc=$(printf '%s\n' "${cpus[@]}" | median)
  prates=()
  if [ -x "$PEERS/postfix-bench.sh" ] && [ "${NO_POSTFIX:-0}" != 1 ]; then
    for run in $(seq 1 "$RUNS"); do
      out=$(N=$N SIZE=$SIZE SESS=$SESS REUSE=$REUSE TIMEOUT=$TIMEOUT "$PEERS/postfix-bench.sh" 2>&1)
      r=$(echo "$out" | awk '/^B1/{for(i=1;i<=NF;i++) if($i=="msg/s,"||$i=="msg/s") print $(i-1)}' | head -1)
      echo "postfix sess=$SESS run=$run: ${r:-?} msg/s (postfix-bench.sh phase B1)"
      [ -n "$r" ] && prates+=("$r")
    done
  fi
  fm=$(printf '%s\n' "${prates[@]}" | median)
  ratio=$(awk -v a="$pm" -v b="$fm" 'BEGIN{ if(b>0) printf "%.1f", a/b; else print "n/a"}')
  echo "MEDIAN sess=$SESS: petrel $pm msg/s ($pc CPU s/1000 msgs), postfix $fm msg/s, ratio ${ratio}x"
done
