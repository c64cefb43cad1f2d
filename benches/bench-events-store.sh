#!/usr/bin/env bash
# The control plane's event store at scale (issue 13): ingest rate, and `GET /v1/events` latency
# with EVENTS stored events, on SQLite and on PostgreSQL.
#
#   benches/bench-events-store.sh                       # EVENTS=10000000 on both stores
#   EVENTS=1000000 STORES=sqlite benches/bench-events-store.sh
#   PG_URL=postgres://u@host:5432/emptydb STORES=pg benches/bench-events-store.sh
#
# For each store: starts the real control plane (`petrel control serve`, loopback ports of its
# own; on PostgreSQL a private server started here, or PG_URL, which must name an empty
# database), then with the load driver (`control-plane/server/examples/events_store.rs`):
#   1. ingest: INGEST_EVENTS realistic events through `events::ingest` (what the push link runs
#      for every `Events` frame), 1,000-event batches from one engine, into the empty store;
#   2. fill: EVENTS events through the same insert path (`store::events::insert_batch`), in
#      transactions of TX_EVENTS, then ANALYZE on PostgreSQL (what autovacuum does on its own);
#      the load stops early after FILL_SECONDS_MAX seconds (default 3600) and says at how many;
#   3. queries over HTTP to the running control plane with the operator owner key, one
#      keep-alive connection: QUERIES each of `recipient=`, `message_id=`, `tag=`, `type=` (a
#      different value each time, spread over the whole load) and the first page unfiltered;
#      median and p99 in ms, with the rows per page;
#   4. ingest again, INGEST_EVENTS more, now into the full store.
# Bounded: every step has a timeout (STEP_TIMEOUT_S); every process started here is stopped by
# PID on exit. Build first: cargo build --locked --release -p petrel && cargo build --locked
# --release -p petrel-control --example events_store (the script does it when they are missing).
set -u
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-10000000}; INGEST_EVENTS=${INGEST_EVENTS:-200000}; QUERIES=${QUERIES:-200}
TX_EVENTS=${TX_EVENTS:-50000}; STORES=${STORES:-"sqlite pg"}; STEP_TIMEOUT_S=${STEP_TIMEOUT_S:-5400}
FILL_SECONDS_MAX=${FILL_SECONDS_MAX:-3600}
TARGET=${CARGO_TARGET_DIR:-$(pwd)/target}
BIN=${BIN:-$TARGET/release/petrel}
DRIVER=${DRIVER:-$TARGET/release/examples/events_store}
[ -x "$BIN" ] || cargo build --locked --release -p petrel >&2 || exit 1
[ -x "$DRIVER" ] || cargo build --locked --release -p petrel-control --example events_store >&2 || exit 1
W=$(mktemp -d /tmp/petrel-evstore.XXXXXX)
chmod 755 "$W"
CP=""; PG_PID=""
stop_pid() {
  [ -n "$1" ] || return 0
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null
}
cleanup() { stop_pid "$CP"; stop_pid "$PG_PID"; rm -rf "$W"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_pg() {
  INITDB=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)
  [ -n "$INITDB" ] || { echo "PostgreSQL not installed (ops/test.sh installs it), or set PG_URL"; return 1; }
  PGBIN=$(dirname "$INITDB"); RUN="runuser -u postgres --"; [ "$(id -u)" = 0 ] || RUN=""
  mkdir -p "$W/pg" && chown postgres "$W/pg" 2>/dev/null
  $RUN "$PGBIN/initdb" -D "$W/pg/data" -U petrel --auth=trust > /dev/null || return 1
  PG_PORT=$(free_port)
  # Stock settings but for shared_buffers (25 % of RAM is the usual advice; PG_OPTS overrides).
  $RUN "$PGBIN/postgres" -D "$W/pg/data" -h 127.0.0.1 -p "$PG_PORT" -k "$W/pg" \
    ${PG_OPTS:--c shared_buffers=2GB} > "$W/pg/log" 2>&1 &
  PG_PID=$!
  for _ in $(seq 1 100); do "$PGBIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -q && break; sleep 0.1; done
  DB_URL="postgres://petrel@127.0.0.1:$PG_PORT/postgres"
}

run_store() {
  local store=$1 dir="$W/$1" DB_URL=""
  mkdir -p "$dir"
  if [ "$store" = pg ]; then
    if [ -n "${PG_URL:-}" ]; then DB_URL=$PG_URL; else start_pg || return 1; fi
  fi
  local api; api=$(free_port)
  "$BIN" control serve --data-dir "$dir" --api-listen "127.0.0.1:$api" \
    --push-listen "127.0.0.1:$(free_port)" \
    ${DB_URL:+--database-url "$DB_URL"} > "$dir/serve.out" 2> "$dir/serve.err" &
  CP=$!
  for _ in $(seq 1 300); do grep -q "owner API key" "$dir/serve.out" 2>/dev/null && break; sleep 0.1; done
  local key; key=$(grep -o 'owner API key (shown once, keep it): [^ ]*' "$dir/serve.out" | awk '{print $NF}')
  [ -n "$key" ] || { echo "control plane did not start"; tail -5 "$dir/serve.err"; return 1; }
  local d=(--control-dir "$dir/control" ${DB_URL:+--database-url "$DB_URL"})
  echo "## $store"
  timeout "$STEP_TIMEOUT_S" "$DRIVER" ingest "${d[@]}" --events "$INGEST_EVENTS" --seed 101 | sed 's/^/empty store: /'
  timeout "$STEP_TIMEOUT_S" "$DRIVER" fill "${d[@]}" --events "$EVENTS" --tx-events "$TX_EVENTS" \
    --samples "$dir/samples.tsv" --seconds-max "$FILL_SECONDS_MAX" || { echo "fill failed or timed out"; return 1; }
  if [ -n "$DB_URL" ]; then
    psql -q "$DB_URL" -c "VACUUM ANALYZE" || return 1
    echo "database size: $(psql -tA "$DB_URL" -c "SELECT pg_size_pretty(pg_database_size(current_database()))")"
  else
    echo "database size: $(du -sh "$dir/control" | cut -f1) (petrel.db and its WAL)"
  fi
  python3 - "$api" "$key" "$dir/samples.tsv" "$QUERIES" <<'PY'
import http.client, json, statistics, sys, time, urllib.parse
port, key, samples_path, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
samples = {}
for line in open(samples_path):
    kind, value = line.rstrip("\n").split("\t", 1)
    samples.setdefault(kind, []).append(value)
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
def get(path):
    t0 = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
    r = conn.getresponse()
    body = r.read()
    ms = (time.perf_counter() - t0) * 1000
    if r.status != 200:
        sys.exit(f"{path}: {r.status} {body[:200]!r}")
    return ms, len(json.loads(body)["events"])
get("/v1/events?limit=1")  # connection and key check, not counted
for kind in ["recipient", "message_id", "tag", "type", "first page"]:
    times, rows = [], []
    for i in range(n):
        if kind == "first page":
            path = "/v1/events"
        else:
            values = samples[kind]
            path = "/v1/events?" + urllib.parse.urlencode({kind: values[i % len(values)]})
        ms, count = get(path)
        times.append(ms)
        rows.append(count)
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"GET /v1/events {kind + '=':<12} {n} queries: median {statistics.median(times):6.2f} ms,"
          f" p99 {p99:6.2f} ms, max {times[-1]:6.2f} ms, {statistics.mean(rows):.1f} rows/page")
PY
  timeout "$STEP_TIMEOUT_S" "$DRIVER" ingest "${d[@]}" --events "$INGEST_EVENTS" --seed 102 | sed "s/^/full store: /"
  stop_pid "$CP"; CP=""
  [ -z "${PG_URL:-}" ] && { stop_pid "$PG_PID"; PG_PID=""; }
  return 0
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; EVENTS=$EVENTS INGEST_EVENTS=$INGEST_EVENTS QUERIES=$QUERIES TX_EVENTS=$TX_EVENTS"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(git rev-parse --short HEAD)"
for s in $STORES; do run_store "$s" || exit 1; done
