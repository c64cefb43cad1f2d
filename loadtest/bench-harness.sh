#!/usr/bin/env bash
# bench-harness.sh - the load harness's own ceiling, side by side with Postfix's smtp-source ->
# smtp-sink under the same settings (loopback only, bounded in time, stops what it starts by PID).
#
#   petrel-load inject -> petrel-load sink      vs      smtp-source -> smtp-sink
#
# Two modes: "new" (a new connection per message; smtp-source without -d, petrel
# --per-connection 1) and "reuse" (smtp-source -d, petrel --per-connection 0). Runs are
# interleaved (petrel, smtp-source, petrel, ...) so both see the same machine load; the median
# of RUNS is reported. Rate = messages / wall time of the injecting process. CPU = user+system
# seconds of each process (injector via bash `times`-style rusage from /usr/bin/time or bash
# TIMEFORMAT, sinks from /proc/PID/stat), per 1,000 messages.
#
# Env knobs: N (20000) SIZE (1024) SESS (20) RUNS (3) PORT (2640) TIMEOUT (120 s per command)
#            BIN (petrel-load binary; default: build with cargo --release into CARGO_TARGET_DIR)
#            EXTRA="--no-pipelining" adds petrel injector flags (e.g. lockstep like smtp-source)
#            THREADS (0 = one per core) core threads of the petrel injector and sink; THREADS=1
#            matches smtp-source/smtp-sink, which are single-threaded (on a loaded machine
#            more threads also means a larger share of the CPU, which flatters petrel)
set -u
N=${N:-20000}; SIZE=${SIZE:-1024}; SESS=${SESS:-20}; RUNS=${RUNS:-3}; PORT=${PORT:-2640}
TIMEOUT=${TIMEOUT:-120}; EXTRA=${EXTRA:-}; THREADS=${THREADS:-0}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/petrel-bench.XXXXXX)
PIDS=()

die() { echo "ERROR: $*" >&2; exit 1; }
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${BIN:-}" ]; then
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-loadtest}
  (cd "$HERE/.." && cargo build --locked --release -q -p petrel-loadtest) || die "build failed"
  BIN=$CARGO_TARGET_DIR/release/petrel-load
fi
[ -x "$BIN" ] || die "no binary at $BIN"
if ! command -v smtp-source >/dev/null; then
  echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >/dev/null 2>&1 || die "apt-get install postfix failed"
fi

now() { date +%s.%N; }
# user+system seconds of a live process from /proc/PID/stat (USER_HZ = 100)
proc_cpu() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat" 2>/dev/null || echo 0; }
wait_listen() { local i; for i in $(seq 1 100); do
  ss -Hltn "sport = :$1" | grep -q . && return 0; sleep 0.05; done; return 1; }
stop_pid() { kill "$1" 2>/dev/null; wait "$1" 2>/dev/null; }
json() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): d=d[k]
print(d)' "$1" "$2"; }

# one petrel run; prints "rate inj_cpu_per_1k sink_cpu_per_1k ok"
petrel_run() { # $1=port $2=per-connection
  "$BIN" sink --listen "127.0.0.1:$1" --expect "$N" --duration "${TIMEOUT}s" --threads "$THREADS" --json \
    > "$WORK/sink.json" 2>/dev/null &
  local sp=$!; PIDS+=("$sp")
  wait_listen "$1" || die "petrel sink not listening on $1"
  local t0 t1
  t0=$(now)
  timeout "$TIMEOUT" "$BIN" inject --target "127.0.0.1:$1" --messages "$N" --connections "$SESS" \
    --size "$SIZE" --per-connection "$2" --threads "$THREADS" $EXTRA --json > "$WORK/inj.json" 2>/dev/null
  t1=$(now)
  local i; for i in $(seq 1 $((TIMEOUT * 10))); do kill -0 "$sp" 2>/dev/null || break; sleep 0.1; done
  stop_pid "$sp"
  local ok sc ic
  ok=$(json "$WORK/inj.json" counts.messages_2xx 2>/dev/null || echo 0)
  ic=$(json "$WORK/inj.json" cpu_s 2>/dev/null || echo 0)
  sc=$(json "$WORK/sink.json" cpu_s 2>/dev/null || echo 0)
  awk -v n="$N" -v a="$t0" -v b="$t1" -v ic="$ic" -v sc="$sc" -v ok="$ok" \
    'BEGIN{printf "%.0f %.4f %.4f %d\n", n/(b-a), ic*1000/n, sc*1000/n, ok}'
}

# one smtp-source run; prints "rate src_cpu_per_1k sink_cpu_per_1k"
postfix_run() { # $1=port $2=smtp-source opts
  smtp-sink -u nobody -c "127.0.0.1:$1" 1024 > "$WORK/smtp-sink.log" 2>&1 &
  local sp=$!; PIDS+=("$sp")
  wait_listen "$1" || die "smtp-sink not listening on $1"
  local c0 t0 t1 c1
  c0=$(proc_cpu "$sp")
  t0=$(now)
  # shellcheck disable=SC2086
  /usr/bin/time -f "%U %S" -o "$WORK/src.time" timeout "$TIMEOUT" \
    smtp-source $2 -s "$SESS" -m "$N" -l "$SIZE" -t to@example.test "127.0.0.1:$1" >/dev/null 2>&1
  t1=$(now)
  c1=$(proc_cpu "$sp")
  stop_pid "$sp"
  local u s; read -r u s < "$WORK/src.time"
  awk -v n="$N" -v a="$t0" -v b="$t1" -v u="$u" -v s="$s" -v c0="$c0" -v c1="$c1" \
    'BEGIN{printf "%.0f %.4f %.4f\n", n/(b-a), (u+s)*1000/n, (c1-c0)*1000/n}'
}

median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

echo "# harness ceiling: N=$N SIZE=$SIZE SESS=$SESS RUNS=$RUNS $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# petrel-load threads=${THREADS} (0 = one per core), extra flags: '${EXTRA}'"
port=$PORT
for mode in new reuse; do
  if [ $mode = new ]; then pc=1; so=""; else pc=0; so="-d"; fi
  : > "$WORK/p.$mode"; : > "$WORK/s.$mode"
  for r in $(seq 1 "$RUNS"); do
    port=$((port + 1)); petrel_run "$port" "$pc" >> "$WORK/p.$mode"
    port=$((port + 1)); postfix_run "$port" "$so" >> "$WORK/s.$mode"
    echo "  run $r $mode: petrel $(tail -1 "$WORK/p.$mode" | cut -d' ' -f1) msg/s, smtp-source $(tail -1 "$WORK/s.$mode" | cut -d' ' -f1) msg/s"
  done
  pr=$(cut -d' ' -f1 "$WORK/p.$mode" | median); sr=$(cut -d' ' -f1 "$WORK/s.$mode" | median)
  pic=$(cut -d' ' -f2 "$WORK/p.$mode" | median); psc=$(cut -d' ' -f3 "$WORK/p.$mode" | median)
  sic=$(cut -d' ' -f2 "$WORK/s.$mode" | median); ssc=$(cut -d' ' -f3 "$WORK/s.$mode" | median)
  bad=$(awk -v n="$N" '$4 != n' "$WORK/p.$mode" | wc -l)
  printf "%-6s petrel-load %7s msg/s (cpu/1k msgs: inject %.3fs sink %.3fs) | smtp-source %7s msg/s (cpu/1k: source %.3fs sink %.3fs) | ratio %.2fx%s\n" \
    "$mode" "$pr" "$pic" "$psc" "$sr" "$sic" "$ssc" "$(awk -v a="$pr" -v b="$sr" 'BEGIN{print a/b}')" \
    "$([ "$bad" = 0 ] || echo "  WARN: $bad petrel runs not all 2xx")"
done
