#!/usr/bin/env bash
# Ack latency (issue 17): time from the end of DATA to the 250, under load, fsync on.
#
#   benches/bench-ack-latency.sh                   # CONNS=200 N=100000 SIZE=1024
#   BIN=/tmp/petrel-old benches/bench-ack-latency.sh
#   INJECTOR=/tmp/petrel-other benches/bench-ack-latency.sh   # another build's injector (default: BIN)
#   CONFIG=engine.toml RATES="20000" benches/bench-ack-latency.sh   # an engine configuration
#   RUNS=5 benches/bench-ack-latency.sh            # runs per rate (default 3)
#
# The engine relays to `petrel load sink` (delivery runs, as in production). First an unpaced
# run finds the rate; then `petrel load inject --rate` at 10 %, 25 % and 50 % of it (RATES to
# override, in msg/s) reports the DATA phase's p50, p99, p99.9 and max (the injector's own
# histogram of end-of-data written to reply read). Each rate runs RUNS times, with a fresh
# engine and sink each time, and a "median" line gives the median of each figure over the runs
# (the unpaced rate that sets the others is the median of its runs). Each run also prints the
# engine's own view: the share of its commits (end of data to durable, from
# `petrel_spool_commit_duration_seconds` on /metrics at METRICS_PORT) within 1 ms and 5 ms, the
# targets' bounds, and its CPU per message; a slow answer that the engine committed in time
# waited for a core or for the injector. The engine's cores (its CPU seconds per second of the
# run) are given against the unpaced runs', its saturation on these cores, and each run gives the
# injector's round trips per message: an unpaced run writes the next envelope with the end of
# data (one), a paced one on schedule waits for it (two), so a paced message costs the engine
# more. Loopback only; every process stopped by PID; every run bounded in count and time.
set -u
cd "$(dirname "$0")/.."
N=${N:-100000}; SIZE=${SIZE:-1024}; CONNS=${CONNS:-200}; DOMAINS=${DOMAINS:-1000}; RUNS=${RUNS:-3}
PORT=${PORT:-2755}; SINK_PORT=${SINK_PORT:-2756}; METRICS_PORT=${METRICS_PORT:-2757}; TIMEOUT=${TIMEOUT:-300}
BIN=${BIN:-target/release/petrel}
[ -x "$BIN" ] || cargo build --locked --release --bin petrel >&2 || exit 1
INJECTOR=${INJECTOR:-$BIN}
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; }
trap cleanup EXIT
field() { grep -o "\"$2\": *[0-9.]*" <<<"$1" | head -1 | grep -o '[0-9.]*$'; }
data_latency() { # the "data" object of latency_us; round trips per message with PIPELINING (the engine offers it)
  python3 -c 'import json,sys; r=json.load(sys.stdin); d=r["latency_us"]["data"]; c=r["counts"]; rt=2-c.get("envelopes_merged",0)/max(c["messages_attempted"],1)
print("%.0f msg/s accepted %d/%d; data p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms; %.2f round trips/msg" % (r["rate_2xx_per_s"], c["messages_2xx"], c["messages_attempted"], d["p50_us"]/1000, d["p99_us"]/1000, d["p999_us"]/1000, d["max_us"]/1000, rt))'
}
ENGINE_VIEW=$(mktemp /tmp/petrel-acklat-view.XXXXXX)
trap 'cleanup; rm -f "$ENGINE_VIEW"' EXIT
engine_view() { # messages, engine CPU ticks, msg/s -> "engine: commits <= 1 ms x %, <= 5 ms y %; z ms CPU/msg, c engine cores"
  python3 -c 'import re,sys,urllib.request
n,ticks,hz,rate=int(sys.argv[2]),int(sys.argv[3]),int(sys.argv[4]),float(sys.argv[5] or 0)
b={}
for l in urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=10).read().decode().splitlines():
    m=re.match(r"petrel_spool_commit_duration_seconds_bucket\{le=\"([^\"]+)\"\} (\d+)", l)
    if m: b[m.group(1)]=int(m.group(2))
total=b.get("+Inf",0)
if total == 0: print("engine: no commits scraped"); sys.exit()
print("engine: commits <= 1 ms %.1f %%, <= 5 ms %.2f %%; %.4f ms CPU/msg, %.2f engine cores" % (100*b["0.001"]/total, 100*b["0.005"]/total, 1000*ticks/hz/max(n,1), ticks/hz/(n/rate) if rate > 0 else 0))' "$METRICS_PORT" "$1" "$2" "$(getconf CLK_TCK)" "$3" 2>/dev/null || echo "engine: no scrape"
}
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
run() { # rate (empty: unpaced) -> the injector's JSON; the engine's view in $ENGINE_VIEW
  local DATA rate_arg=() out t0
  DATA=$(mktemp -d /tmp/petrel-acklat.XXXXXX)
  [ -n "$1" ] && rate_arg=(--rate "$1")
  "$BIN" load sink --listen "127.0.0.1:$SINK_PORT" --duration "${TIMEOUT}s" > /dev/null 2>&1 &
  local SINK=$!; PIDS+=("$SINK")
  local cfg=()
  [ -n "${CONFIG:-}" ] && cfg=(--config "$CONFIG")
  "$BIN" engine "${cfg[@]}" --data-dir "$DATA" --smtp-listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" \
    --admin-listen 127.0.0.1:0 --relay-to "127.0.0.1:$SINK_PORT" --trust-network 127.0.0.0/8 \
    > "$DATA/engine.out" 2> "$DATA/engine.err" &
  local ENGINE=$!; PIDS+=("$ENGINE")
  for _ in $(seq 1 300); do grep -q "engine ready" "$DATA/engine.out" 2>/dev/null && break; sleep 0.1; done
  t0=$(cpu_ticks "$ENGINE")
  out=$(timeout "$TIMEOUT" "$INJECTOR" load inject --target "127.0.0.1:$PORT" --messages "$N" --connections "$CONNS" \
    --size "$SIZE" --domains "$DOMAINS" --duration "${TIMEOUT}s" "${rate_arg[@]}" --json 2>/dev/null)
  engine_view "$N" $(( $(cpu_ticks "$ENGINE") - t0 )) "$(field "$out" rate_2xx_per_s)" > "$ENGINE_VIEW"
  echo "$out"
  kill "$SINK" "$ENGINE"; wait "$SINK" "$ENGINE" 2>/dev/null
  rm -rf "$DATA"
}

echo "# $(date -u +%FT%TZ) $(nproc) cores; N=$N SIZE=$SIZE CONNS=$CONNS DOMAINS=$DOMAINS RUNS=$RUNS fsync=on bin=$BIN injector=$INJECTOR"
median_of() { # "label" then one JSON report per line on stdin -> the median of each figure
  python3 -c 'import json,sys,statistics as st
rs=[json.loads(l) for l in sys.stdin if l.strip()]
m=lambda f: st.median(f(r) for r in rs)
d=lambda k: m(lambda r: r["latency_us"]["data"][k])/1000
print("%s median of %d: %.0f msg/s; data p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms" % (sys.argv[1], len(rs), m(lambda r: r["rate_2xx_per_s"]), d("p50_us"), d("p99_us"), d("p999_us"), d("max_us")))' "$1"
}
median() { tr ' ' '\n' | python3 -c 'import sys,statistics as st; v=[float(l) for l in sys.stdin if l.strip()]; print("%.2f" % st.median(v) if v else "")'; }
runs() { # rate (empty: unpaced), label -> each run's line, then the median line; JSON lines kept in
  # $ALL, the median of the engine's cores (CPU seconds per second of the run) in $CORES
  ALL=""; local cores=""
  for i in $(seq 1 "$RUNS"); do
    local out
    out=$(run "$1" | tr -d '\n')
    [ -n "$out" ] || { echo "$2 run $i: no report"; continue; }
    ALL+="$out"$'\n'
    cores+=" $(grep -o '[0-9.]* engine cores' "$ENGINE_VIEW" | cut -d' ' -f1)"
    echo "$2 run $i: $(data_latency <<<"$out"); $(cat "$ENGINE_VIEW")"
  done
  CORES=$(median <<<"$cores")
  [ -n "$ALL" ] && median_of "$2" <<<"$ALL"
  # How busy the engine is against the unpaced runs (its saturation on these cores).
  [ -n "$CORES" ] || return 0
  local share=""
  [ -n "${UNPACED_CORES:-}" ] && share=$(awk -v c="$CORES" -v u="$UNPACED_CORES" 'BEGIN{printf ", %.0f %% of the unpaced runs (%s)", 100*c/u, u}')
  echo "$2 median engine cores: $CORES$share"
}
runs "" unpaced
UNPACED_CORES=$CORES
unpaced=$(python3 -c 'import json,sys,statistics as st; print(st.median(json.loads(l)["rate_2xx_per_s"] for l in sys.stdin if l.strip()))' <<<"$ALL")
RATES=${RATES:-$(awk -v u="$unpaced" 'BEGIN{printf "%d %d %d", u*0.1, u*0.25, u*0.5}')}
for r in $RATES; do
  # Enough messages for 20 s at the rate, at most N.
  n=$(( r * 20 < N ? r * 20 : N ))
  N=$n runs "$r" "rate $r msg/s ($n messages)"
done
